"""Static checks of the deployment files: docker-compose.yaml, Dockerfile, .env.example and the
IAM policies in include/iam. No container engine is needed: the files are parsed, not run."""

from __future__ import annotations

import json
import re
import shlex
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


def test_cloudtrail_policy_reads_only_awslogs_and_decrypts_via_s3():
    stmts = statements(iam_policy("trailguard-read-cloudtrail.json"))
    get = [s for s in stmts if "s3:GetObject" in as_list(s["Action"])]
    assert get
    for stmt in get:
        for resource in as_list(stmt["Resource"]):
            assert resource.endswith("/AWSLogs/*"), resource
            assert "EXAMPLE-CLOUDTRAIL-BUCKET" in resource
    listing = next(s for s in stmts if "s3:ListBucket" in as_list(s["Action"]))
    patterns = as_list(listing["Condition"]["StringLike"]["s3:prefix"])
    assert "AWSLogs/*" in patterns
    assert any(p.endswith("/AWSLogs/*") and p != "AWSLogs/*" for p in patterns)
    assert all(p in {"", "AWSLogs/*"} or p.split("/")[0] == "EXAMPLE-TRAIL-PREFIX" for p in patterns)
    kms = [s for s in stmts if "kms:Decrypt" in as_list(s["Action"])]
    assert len(kms) == 1
    assert as_list(kms[0]["Resource"])[0].startswith("arn:aws:kms:")
    assert "111122223333" in as_list(kms[0]["Resource"])[0]
    via = kms[0]["Condition"]["StringEquals"]["kms:ViaService"]
    assert re.fullmatch(r"s3\.[a-z0-9-]+\.amazonaws\.com", via)


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
