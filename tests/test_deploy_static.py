"""Static checks of the deployment files: docker-compose.yaml, Dockerfile, .env.example and the
IAM policies in include/iam. No container engine is needed: the files are parsed, not run."""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from trailguard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
IAM_DIR = ROOT / "include" / "iam"
IAM_FILES = ["trailguard-read-cloudtrail.json", "trailguard-lake-s3.json"]

AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
]
REQUIRED_SERVICES = ["postgres", "redis", *AIRFLOW_SERVICES]
# Services that carry a healthcheck in the official Airflow 3 compose file, and a fragment of it.
HEALTHCHECKS = {
    "postgres": "pg_isready",
    "redis": "redis-cli ping",
    "airflow-apiserver": "http://localhost:8080/api/v2/monitor/health",
    "airflow-scheduler": "http://localhost:8974/health",
    "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob",
    "airflow-triggerer": "airflow jobs check --job-type TriggererJob",
    "airflow-worker": "inspect ping",
    "flower": "http://localhost:5555/",
}
# Commands as in the official file (airflow-init runs a bash script instead).
COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
    "flower": "celery flower",
}
# Environment every Airflow container must see (a service-level `environment:` replaces the
# anchor's mapping unless it merges it again, which these catch).
COMMON_ENV = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-apiserver:8080/execution/",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
}
COMMON_ENV_KEYS = [
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "TRAILGUARD_DB",
    "TRAILGUARD_LAKE",
]
# Names .env.example must define besides the TRAILGUARD_* settings.
OTHER_ENV_NAMES = [
    "AIRFLOW_UID",
    "FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "_AIRFLOW_WWW_USER_USERNAME",
    "_AIRFLOW_WWW_USER_PASSWORD",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW_CONN_AWS_DEFAULT",
    "AIRFLOW_CONN_SLACK_ALERTS",
    "AIRFLOW_CONN_SLACK_OPS",
]

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME:+alt}; `$${...}` is an escape.
BRACED_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])[^}]*)?\}")
# $NAME without braces, not preceded by another $ (which would make it `$$NAME`, an escape).
BARE_VAR = re.compile(r"(?<!\$)\$(?![${])[A-Za-z_]")


# -- helpers -------------------------------------------------------------------------------------
def compose_text_without_comments() -> str:
    """The compose file minus whole-line comments (Compose does not interpolate those)."""
    lines = COMPOSE_FILE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def referenced_vars(text: str) -> set[str]:
    return {m.group(1) for m in BRACED_VAR.finditer(text)}


def parse_env_file(text: str) -> dict[str, str]:
    """NAME=value lines of a dotenv file (comments and blank lines skipped, quotes removed)."""
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a NAME=value line in .env.example: {raw!r}"
        name = name.strip()
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"bad variable name {name!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        assert name not in values, f"{name} is defined twice in .env.example"
        values[name] = value
    return values


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return out


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def command_text(value: str | list[str] | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else " ".join(value)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE.read_text())


@pytest.fixture(scope="module")
def docker_instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


# -- the helpers themselves (so a broken regex cannot pass everything silently) ---------------------
def test_var_regex_finds_every_form_and_skips_escapes():
    text = 'a: ${ONE}\nb: ${TWO:-x}\nc: ${THREE:?msg here}\nd: "$${ESCAPED}"\ne: ${FOUR-y}\nf: $$(id -u)'
    assert referenced_vars(text) == {"ONE", "TWO", "THREE", "FOUR"}
    assert not BARE_VAR.search(text)
    assert BARE_VAR.search("x: $HOME/dir")


def test_env_parser_reads_quoted_json_and_rejects_duplicates():
    parsed = parse_env_file('# c\nA=1\nB=\'{"k": "v"}\'\n\nC=\n')
    assert parsed == {"A": "1", "B": '{"k": "v"}', "C": ""}
    with pytest.raises(AssertionError):
        parse_env_file("A=1\nA=2\n")


# -- docker-compose.yaml ---------------------------------------------------------------------------
def test_compose_has_all_services(services: dict):
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"services missing from docker-compose.yaml: {missing}"


def test_infrastructure_images(services: dict):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7.2-bookworm"


@pytest.mark.parametrize("service", sorted(HEALTHCHECKS))
def test_healthchecks_like_the_official_file(services: dict, service: str):
    assert service in services, f"{service} is not defined"
    check = services[service].get("healthcheck")
    assert check, f"{service} has no healthcheck"
    test = check["test"]
    assert as_list(test)[0] in {"CMD", "CMD-SHELL"}
    assert HEALTHCHECKS[service] in " ".join(as_list(test)[1:]), f"{service} healthcheck: {test}"


def test_common_anchor_builds_project_image(compose: dict):
    common = compose["x-airflow-common"]
    assert common["build"] in [".", {"context": "."}]
    assert ".env" in as_list(common["env_file"])
    assert common["user"] == "${AIRFLOW_UID:-50000}:0"
    targets = {v.split(":")[1] for v in common["volumes"]}
    for folder in ("dags", "plugins", "include", "logs", "config"):
        assert f"/opt/airflow/{folder}" in targets, f"{folder} is not mounted"
    assert "/opt/airflow/lake" in targets


@pytest.mark.parametrize("service", [*AIRFLOW_SERVICES, "flower"])
def test_airflow_services_use_the_built_image_and_common_env(services: dict, service: str):
    svc = services[service]
    assert svc.get("build") == ".", f"{service} does not build the project's Dockerfile"
    assert svc.get("image") == "trailguard-airflow:latest", f"{service} tags a different image"
    env = svc["environment"]
    for key, expected in COMMON_ENV.items():
        assert str(env.get(key)).lower() == expected.lower(), f"{service}: {key}={env.get(key)!r}"
    for key in COMMON_ENV_KEYS:
        assert key in env, f"{service} lacks {key}"


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_commands_like_the_official_file(services: dict, service: str):
    assert command_text(services[service].get("command")) == COMMANDS[service]


def test_state_store_and_lake_settings(services: dict):
    env = services["airflow-scheduler"]["environment"]
    assert env["TRAILGUARD_DB"].endswith("postgresql+psycopg2://airflow:airflow@postgres/trailguard}")
    assert env["TRAILGUARD_LAKE"] == "${TRAILGUARD_LAKE:-/opt/airflow/lake}"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW__API_AUTH__JWT_SECRET")


def test_worker_and_apiserver_specifics(compose: dict, services: dict):
    assert services["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    assert "airflow-apiserver" in services["airflow-worker"]["depends_on"]
    assert "trailguard-lake" in compose["volumes"]
    assert "postgres-db-volume" in compose["volumes"]


def test_init_migrates_and_creates_trailguard_database(services: dict):
    init = services["airflow-init"]
    script = command_text(init["command"])
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["environment"]["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert re.search(r"CREATE DATABASE\s+trailguard\b", script)
    assert "mkdir" in script
    for name in AIRFLOW_SERVICES:
        if name == "airflow-init":
            continue
        condition = services[name]["depends_on"]["airflow-init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_flower_is_behind_a_profile(services: dict):
    assert services["flower"].get("profiles") == ["flower"]


def test_every_compose_variable_is_in_env_example(env_example: dict[str, str]):
    used = referenced_vars(compose_text_without_comments())
    assert "AIRFLOW_UID" in used and "FERNET_KEY" in used  # the scan sees the file at all
    missing = sorted(used - env_example.keys())
    assert not missing, f"referenced in docker-compose.yaml but not defined in .env.example: {missing}"


def test_compose_has_no_unbraced_interpolation():
    offending = [line for line in compose_text_without_comments().splitlines() if BARE_VAR.search(line)]
    assert not offending, f"use ${{NAME}} (or $$ for the shell) instead: {offending}"


# -- .env.example ------------------------------------------------------------------------------------
def test_env_example_defines_every_trailguard_setting(env_example: dict[str, str]):
    names = Settings.env_names()
    assert names and all(name.startswith("TRAILGUARD_") for name in names)
    missing = [name for name in names if name not in env_example]
    assert not missing, f"TRAILGUARD_* settings missing from .env.example: {missing}"
    unknown = sorted(n for n in env_example if n.startswith("TRAILGUARD_") and n not in names)
    assert not unknown, f".env.example sets TRAILGUARD_* names the code does not read: {unknown}"


def test_env_example_defines_airflow_settings(env_example: dict[str, str]):
    missing = [name for name in OTHER_ENV_NAMES if name not in env_example]
    assert not missing, f"missing from .env.example: {missing}"
    assert env_example["AIRFLOW_UID"].isdigit()


def test_env_example_values_parse_as_settings(env_example: dict[str, str]):
    settings = Settings.from_mapping(env_example)
    assert settings.source.startswith("s3://")
    assert settings.fetch_threads == 16
    assert settings.late_lookback_hours == 2
    assert settings.catchup is False
    assert settings.alert_horizon_hours == 48


def test_env_example_connections_are_json(env_example: dict[str, str]):
    aws = json.loads(env_example["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws["conn_type"] == "aws"
    assert aws["extra"]["region_name"]
    for name in ("AIRFLOW_CONN_SLACK_ALERTS", "AIRFLOW_CONN_SLACK_OPS"):
        conn = json.loads(env_example[name])
        assert conn["conn_type"] in {"slackwebhook", "slack"}, name
        if conn["conn_type"] == "slackwebhook":
            assert conn["password"].startswith("https://hooks.slack.com/services/"), name


def test_env_example_holds_no_real_secrets():
    text = ENV_EXAMPLE.read_text()
    for key in re.findall(r"AKIA[0-9A-Z]{16}", text):
        assert "EXAMPLE" in key, f"looks like a real access key id: {key}"
    assert not re.search(r"xox[abprs]-\d", text), "looks like a real Slack token"
    for url in re.findall(r"https://hooks\.slack\.com/services/\S+?(?=[\"'\s])", text):
        assert "REPLACE" in url, f"looks like a real webhook: {url}"


# -- Dockerfile -------------------------------------------------------------------------------------
def test_dockerfile_pins_the_airflow_image(docker_instructions: list[tuple[str, str]]):
    froms = [args for keyword, args in docker_instructions if keyword == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(3\.\d+)", froms[0].split()[0])
    assert match, f"base image is not a pinned apache/airflow:<ver>-python<x.y>: {froms[0]}"
    assert match.group(1) == version("apache-airflow"), "image and virtualenv run different Airflow versions"


def test_dockerfile_installs_requirements_as_airflow_user(docker_instructions: list[tuple[str, str]]):
    user = "root"
    copied: set[str] = set()
    installed_requirements = installed_project = False
    for keyword, args in docker_instructions:
        if keyword == "USER":
            user = args.split(":")[0]
        elif keyword == "COPY":
            copied.update(Path(p).name or p for p in shlex.split(args) if not p.startswith("--"))
        elif keyword == "RUN" and "pip install" in args:
            assert user == "airflow", f"pip runs as {user}: {args}"
            words = shlex.split(args.replace("&&", " ; "))
            if "-r" in words and words[words.index("-r") + 1].endswith("requirements.txt"):
                assert "requirements.txt" in copied, "requirements.txt installed before it is copied"
                assert "--no-cache-dir" in words
                installed_requirements = True
            elif "--no-deps" in words:
                assert {"pyproject.toml", "plugins"} <= copied, "project installed before it is copied"
                assert not installed_project
                installed_project = True
    assert installed_requirements, "requirements.txt is never installed"
    assert installed_project, "the project is never installed (pip install --no-deps [-e] .)"


def test_requirements_pin_matches_the_image(docker_instructions: list[tuple[str, str]]):
    requirements = ROOT / "requirements.txt"
    pins = re.findall(r"(?im)^apache-airflow==(\S+)\s*$", requirements.read_text())
    image = next(args for keyword, args in docker_instructions if keyword == "FROM")
    assert pins, "requirements.txt does not pin apache-airflow"
    assert f"apache/airflow:{pins[0]}-" in image


# -- include/iam -----------------------------------------------------------------------------------
def iam_policy(name: str) -> dict:
    return json.loads((IAM_DIR / name).read_text())


def statements(policy: dict) -> list[dict]:
    found = policy["Statement"]
    return [found] if isinstance(found, dict) else found


@pytest.mark.parametrize("name", IAM_FILES)
def test_iam_policy_shape_and_no_wildcards(name: str):
    policy = iam_policy(name)
    assert policy["Version"] == "2012-10-17"
    for stmt in statements(policy):
        assert stmt["Effect"] == "Allow"
        assert "NotAction" not in stmt and "NotResource" not in stmt
        actions = as_list(stmt["Action"])
        resources = as_list(stmt["Resource"])
        assert "*" not in actions, f"{name}: Action '*' in {stmt.get('Sid')}"
        assert "*" not in resources, f"{name}: Resource '*' in {stmt.get('Sid')}"
        for action in actions:
            assert "*" not in action, f"{name}: wildcard action {action}"
        if any(a.startswith("s3:") for a in actions):
            for resource in resources:
                assert resource.startswith("arn:aws:s3:::"), resource
                bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
                assert bucket and "*" not in bucket, f"{name}: bucket wildcard in {resource}"


@pytest.mark.parametrize("name", IAM_FILES)
def test_iam_list_bucket_is_limited_to_prefixes(name: str):
    listing = [s for s in statements(iam_policy(name)) if "s3:ListBucket" in as_list(s["Action"])]
    assert listing, f"{name} does not allow s3:ListBucket"
    for stmt in listing:
        assert as_list(stmt["Action"]) == ["s3:ListBucket"], "keep ListBucket in its own statement"
        conditions = stmt.get("Condition", {})
        prefixes = [
            value
            for operator, block in conditions.items()
            if operator in {"StringLike", "StringEquals"}
            for key, value in block.items()
            if key == "s3:prefix"
        ]
        assert prefixes, f"{name}: s3:ListBucket is not conditioned on s3:prefix"
        for pattern in as_list(prefixes[0]):
            assert pattern != "*", f"{name}: s3:prefix '*' allows listing everything"


# A small evaluator for the condition operators these policies use, so the tests can ask what a
# request trailguard really makes is allowed to do. Identity policies with Allow only: a request is
# allowed when one statement matches its action, resource and every condition (a missing key fails).
TEST_BUCKET, TEST_PREFIX, TRAIL_ACCOUNT = "trail-bucket", "org-trail", "444455556666"
KEY_ACCOUNT, TRAIL_REGION = "111122223333", "us-east-1"


def _glob(pattern: str, value: str) -> bool:
    return (
        re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")).replace(r"\?", "."), value) is not None
    )


def _condition_holds(operator: str, key: str, expected: str | list[str], context: dict[str, str]) -> bool:
    if key not in context:
        return False
    match = {"StringEquals": str.__eq__, "StringLike": _glob}[operator]
    return any(match(pattern, context[key]) for pattern in as_list(expected))


def allowed(policy: dict, action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    context = context or {}
    for stmt in statements(policy):
        if action not in as_list(stmt["Action"]) or not any(_glob(r, resource) for r in as_list(stmt["Resource"])):
            continue
        conditions = stmt.get("Condition", {})
        if all(_condition_holds(op, k, v, context) for op, block in conditions.items() for k, v in block.items()):
            return True
    return False


def filled_read_policy() -> dict:
    """The read policy with its placeholders filled in, as a user would before attaching it."""
    text = (IAM_DIR / "trailguard-read-cloudtrail.json").read_text()
    for placeholder, value in {
        "EXAMPLE-CLOUDTRAIL-BUCKET": TEST_BUCKET,
        "EXAMPLE-TRAIL-PREFIX": TEST_PREFIX,
        "EXAMPLE-1111-2222-3333-KEYID": "1234abcd-12ab-34cd-56ef-1234567890ab",
    }.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def can_list(policy: dict, prefix: str, delimiter: str | None = "/") -> bool:
    context = {"s3:prefix": prefix, **({"s3:delimiter": delimiter} if delimiter else {})}
    return allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{TEST_BUCKET}", context)


def can_get(policy: dict, key: str) -> bool:
    return allowed(policy, "s3:GetObject", f"arn:aws:s3:::{TEST_BUCKET}/{key}")


def test_the_policy_evaluator_itself():
    policy = {
        "Statement": [
            {
                "Action": "s3:ListBucket",
                "Resource": "arn:aws:s3:::b",
                "Condition": {"StringLike": {"s3:prefix": ["AWSLogs/*"]}, "StringEquals": {"s3:delimiter": "/"}},
            }
        ]
    }
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "AWSLogs/1/", "s3:delimiter": "/"})
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "AWSLogs/1/"})  # key missing
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "other/", "s3:delimiter": "/"})
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::b", {"s3:prefix": "AWSLogs/", "s3:delimiter": "/"})
    assert _glob("a*c", "abbc") and not _glob("a*c", "abcd") and _glob("a?c", "abc")


def _recorded_requests(layout: list[str], source: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(Prefix, Delimiter) of every S3 listing trailguard's discovery and listing make for ``source``
    over a bucket holding ``layout``, and the keys it would then read (moto in-process)."""
    import boto3
    from moto import mock_aws
    from trailguard.sources import list_objects, open_store

    listings: list[tuple[str, str | None]] = []
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=TEST_BUCKET)
        for key in layout:
            client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x")
        client.meta.events.register(
            "provide-client-params.s3.ListObjectsV2",
            lambda params, **_: listings.append((params["Prefix"], params.get("Delimiter"))),
        )
        store = open_store(source, client)
        refs = list_objects(
            store, datetime(2026, 11, 20, tzinfo=timezone.utc), datetime(2026, 11, 21, tzinfo=timezone.utc)
        )
    return listings, [store.prefix + ref.key for ref in refs.logs]


LOG = "AWSLogs/{account}/CloudTrail/eu-west-1/2026/11/20/{account}_CloudTrail_eu-west-1_20261120T1305Z_abc.json.gz"


@pytest.mark.parametrize(
    ("layout", "source"),
    [
        ([LOG.format(account="210987654321")], f"s3://{TEST_BUCKET}"),
        ([f"{TEST_PREFIX}/" + LOG.format(account="210987654321")], f"s3://{TEST_BUCKET}"),
        ([f"{TEST_PREFIX}/" + LOG.format(account="210987654321")], f"s3://{TEST_BUCKET}/{TEST_PREFIX}"),
        ([LOG.format(account="o-abcdefghij/210987654321")], f"s3://{TEST_BUCKET}"),  # an organisation trail
        ([LOG.format(account="210987654321"), "other-team/secrets.txt"], f"s3://{TEST_BUCKET}"),  # not listed
        (
            [f"{TEST_PREFIX}/" + LOG.format(account="210987654321"), "other-team/x.txt"],
            f"s3://{TEST_BUCKET}/{TEST_PREFIX}",
        ),
    ],
)
def test_every_request_trailguard_makes_is_allowed(layout: list[str], source: str):
    policy = filled_read_policy()
    listings, reads = _recorded_requests(layout, source)
    assert listings and reads, "nothing was listed or found"
    for prefix, delimiter in listings:
        assert can_list(policy, prefix, delimiter), f"the policy denies listing {prefix!r} (delimiter {delimiter!r})"
    for key in reads:
        assert can_get(policy, key), f"the policy denies reading {key}"


def test_read_policy_denies_what_trailguard_does_not_need():
    policy = filled_read_policy()
    assert not can_list(policy, "", delimiter=None)  # every key name in the bucket, not just folders
    assert not can_list(policy, "other-team/")  # sibling folders: sources.py skips them when denied
    assert not can_list(policy, f"{TEST_PREFIX}/", delimiter=None)
    assert not can_get(policy, "other-team/secrets.txt")
    assert not can_get(policy, f"{TEST_PREFIX}/notes.txt")
    assert can_get(policy, f"{TEST_PREFIX}/" + LOG.format(account="210987654321"))


def test_kms_decrypt_only_for_cloudtrail_log_files_read_through_s3():
    policy = filled_read_policy()
    key = f"arn:aws:kms:{TRAIL_REGION}:{KEY_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    trail = f"arn:aws:cloudtrail:{TRAIL_REGION}:{TRAIL_ACCOUNT}:trail/org-trail"
    via_s3 = {"kms:ViaService": f"s3.{TRAIL_REGION}.amazonaws.com", "kms:EncryptionContext:aws:cloudtrail:arn": trail}
    assert allowed(policy, "kms:Decrypt", key, via_s3)
    assert not allowed(policy, "kms:Decrypt", key, {**via_s3, "kms:ViaService": "ec2.us-east-1.amazonaws.com"})
    assert not allowed(policy, "kms:Decrypt", key, {"kms:EncryptionContext:aws:cloudtrail:arn": trail})  # direct
    other_account = trail.replace(TRAIL_ACCOUNT, "999988887777")
    assert not allowed(
        policy, "kms:Decrypt", key, {**via_s3, "kms:EncryptionContext:aws:cloudtrail:arn": other_account}
    )
    s3_only = {"kms:ViaService": via_s3["kms:ViaService"], "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::x/y"}
    assert not allowed(policy, "kms:Decrypt", key, s3_only)  # another SSE-KMS object, not a CloudTrail log
    assert not allowed(policy, "kms:GenerateDataKey", key, via_s3)
    template = statements(iam_policy("trailguard-read-cloudtrail.json"))
    kms = [s for s in template if "kms:Decrypt" in as_list(s["Action"])]
    assert len(kms) == 1 and as_list(kms[0]["Resource"]) == [
        "arn:aws:kms:us-east-1:111122223333:key/EXAMPLE-1111-2222-3333-KEYID"
    ]


def test_lake_policy_writes_only_under_its_prefix():
    stmts = statements(iam_policy("trailguard-lake-s3.json"))
    write = [s for s in stmts if {"s3:PutObject", "s3:DeleteObject"} & set(as_list(s["Action"]))]
    assert write
    actions = {a for s in write for a in as_list(s["Action"])}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions
    for stmt in write:
        for resource in as_list(stmt["Resource"]):
            key_part = resource.removeprefix("arn:aws:s3:::").partition("/")[2]
            assert key_part.endswith("/*") and len(key_part) > 2, f"not limited to a prefix: {resource}"


# -- secrets stay out; the JWT guard fires ------------------------------------------------------------
def test_compose_refuses_to_start_without_a_jwt_secret(services: dict, env_example: dict[str, str]):
    """`${VAR:?msg}` only fires when the value is empty or unset: the example must leave it empty."""
    env = services["airflow-scheduler"]["environment"]
    assert re.fullmatch(r"\$\{AIRFLOW__API_AUTH__JWT_SECRET:\?[^}]+\}", env["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert env_example["AIRFLOW__API_AUTH__JWT_SECRET"] == ""


def test_gitignore_keeps_secrets_and_container_output_out():
    """Asked of git itself, so the patterns are checked the way git reads them."""
    import subprocess

    ignored = ROOT / ".env", ROOT / "logs" / "scheduler" / "x.log", ROOT / "config" / "airflow.cfg"
    geoip = ROOT / "include" / "geoip" / "GeoLite2-City.mmdb"
    kept = ROOT / ".env.example", ROOT / "plugins" / "trailguard" / "settings.py", ROOT / "include" / "iam"
    paths = [str(p.relative_to(ROOT)) for p in (*ignored, geoip, *kept)]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    assert set(done.stdout.split()) == set(paths[:4])


def test_dockerignore_keeps_secrets_and_the_venv_out_of_the_build_context():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", "var", ".git", "logs", "config", "*.mmdb"} <= patterns
    assert ".env.example" not in patterns and "include" not in patterns  # the image needs include/


# -- requirements ----------------------------------------------------------------------------------------
DEV_TOOLS = {"pytest", "ruff", "moto"}


def pins(path: Path) -> dict[str, str]:
    """name -> version of the ``name==version`` lines (names normalised as pip does)."""
    from packaging.utils import canonicalize_name

    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, sep, ver = line.partition("==")
            assert sep and ver, f"{path.name}: not pinned with ==: {line!r}"
            out[canonicalize_name(name)] = ver
    return out


def test_requirements_split_keeps_development_tools_out_of_the_image(docker_instructions: list[tuple[str, str]]):
    prod, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert not DEV_TOOLS & prod.keys(), "development tools belong in requirements-dev.txt"
    assert dev.keys() >= DEV_TOOLS and not prod.keys() & dev.keys()
    assert (ROOT / "requirements-dev.txt").read_text().count("-r requirements.txt") == 1
    installed = [args for keyword, args in docker_instructions if keyword in {"COPY", "RUN"}]
    assert not any("requirements-dev" in args for args in installed)


def test_every_pinned_package_finds_its_requirements_pinned():
    """The image installs requirements.txt alone: each package's own requirements (for Python 3.11
    on Linux, with the extras other pins ask for) must be pinned there, or pip would pull in
    unpinned versions. requirements-dev.txt is checked against both files."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    prod, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    for pinned, allowed in ((prod, prod), (dev, {**prod, **dev})):
        wanted: list[tuple[str, tuple[str, ...]]] = [(name, ()) for name in pinned]
        seen: set[tuple[str, tuple[str, ...]]] = set()
        missing = set()
        while wanted:
            name, extras = wanted.pop()
            if (name, extras) in seen:
                continue
            seen.add((name, extras))
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:
                missing.add(name)
                continue
            for text in requires:
                req = Requirement(text)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                    dep = canonicalize_name(req.name)
                    if dep not in allowed and dep not in {"setuptools", "pip", "wheel"}:
                        missing.add(dep)
                    wanted.append((dep, tuple(sorted(req.extras))))
        assert not missing, f"required but not pinned: {sorted(missing)}"


def test_worker_replicas_are_configurable(services: dict, env_example: dict[str, str]):
    worker = services["airflow-worker"]
    assert worker["deploy"]["replicas"] == "${AIRFLOW_WORKER_REPLICAS:-1}"
    assert env_example["AIRFLOW_WORKER_REPLICAS"].isdigit()


def test_readme_settings_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in readme.splitlines() if line.startswith("| `TRAILGUARD_")}
    assert rows == set(Settings.env_names())
