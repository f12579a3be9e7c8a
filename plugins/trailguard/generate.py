"""Realistic CloudTrail, written the way CloudTrail delivers it to S3, with optional injected incidents.

Why our own generator: public CloudTrail samples are small, single-account and carry no
"previously unseen" story, so the detections need a baseline month of an organisation's normal
activity (office IPs, cross-account audits, AWS-service noise) with a few known incidents on top.
Everything is drawn from one seeded ``random.Random``, so a seed gives the same records again.
"""

from __future__ import annotations

import base64
import gzip
import math
import os
import random
import string
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import cache, cached_property, lru_cache
from pathlib import Path

import orjson

WINDOW = 300  # CloudTrail batches events into files about every 5 minutes
HOUR = 3600
DAY = 86400
DELAY_MINUTES = (5, 10)  # a file lands this long after the end of its 5-minute window
GLOBAL_REGION = "us-east-1"  # IAM (a global service) is recorded here
OUTSIDE_ACCOUNT = "999988887777"
INCIDENT_KINDS = ("new_country_provisioning", "outside_account_assume_role", "role_chaining_new_account")
DEFAULT_EVENTS_PER_HOUR = 120
HUMAN_SHARE = 0.75  # the rest of the background is AWS-service noise
MANIFEST = "trailguard-generate.json"  # written beside AWSLogs/ by generate_trail

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
UUID_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
UUID_BITS = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + "234567"
Event = tuple[int, str, str, dict]  # (epoch seconds, trail account, region, record)


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Office:
    """Where people work: their API calls leave through these NAT addresses."""

    name: str
    country: str  # ISO code GeoLite2 (2018) gives for every address in `network`
    city: str
    utc_offset: int  # hours; business hours are weighted in local time
    network: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    regions: tuple[str, ...]
    buckets: tuple[str, ...]
    vpc_id: str
    subnet_id: str
    kms_key_id: str


@dataclass(frozen=True)
class Role:
    name: str
    account_id: str
    role_id: str  # AROA...
    path: str = "/"

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role{self.path}{self.name}"

    def session_arn(self, session: str) -> str:
        return f"arn:aws:sts::{self.account_id}:assumed-role/{self.name}/{session}"


@dataclass(frozen=True)
class User:
    """A person: an IAM user with a long-lived key, or an SSO user with a permission-set role."""

    name: str
    kind: str  # "iam" | "sso"
    account_ids: tuple[str, ...]  # iam: its own account; sso: accounts the permission set reaches
    office: str
    user_agent: str
    principal_id: str = ""  # AIDA... (iam)
    access_key_id: str = ""  # AKIA... (iam)
    permission_set: str = ""  # sso role name prefix, e.g. AWSReservedSSO_AdministratorAccess


@dataclass(frozen=True)
class Machine:
    """An EC2 workload with an instance-profile role, calling from a fixed AWS public address."""

    name: str
    account_id: str
    role: str
    instance_id: str
    ip: str
    region: str
    assumes: tuple[str, ...] = ()  # role ARNs in other accounts it chains into every 6 hours


@dataclass(frozen=True)
class Org:
    org_id: str
    accounts: tuple[Account, ...]
    offices: tuple[Office, ...]
    users: tuple[User, ...]
    roles: tuple[Role, ...]
    machines: tuple[Machine, ...]
    security_account: str
    admin_user: str = ""  # IAM user in the management account who hops into staging on weekdays

    def account(self, key: str) -> Account:
        return self._accounts[key]

    @cached_property
    def _accounts(self) -> dict[str, Account]:
        """Lookup by id or name; a dict because the benchmark asks this 200k times."""
        return {**{a.id: a for a in self.accounts}, **{a.name: a for a in self.accounts}}

    def office(self, name: str) -> Office:
        return next(o for o in self.offices if o.name == name)

    def user(self, name: str) -> User:
        return next(u for u in self.users if u.name == name)

    def machine(self, name: str) -> Machine:
        return next(m for m in self.machines if m.name == name)

    def role(self, account_id: str, name: str) -> Role:
        """By name or ARN; an SSO role also by its permission-set prefix (AWSReservedSSO_<set>)."""
        return self._roles[account_id, name]

    def role_by_arn(self, arn: str) -> Role:
        return self._roles["", arn]

    def sso_role(self, account_id: str, permission_set: str) -> Role:
        return self._roles[account_id, permission_set]

    @cached_property
    def _roles(self) -> dict[tuple[str, str], Role]:
        index: dict[tuple[str, str], Role] = {}
        for r in self.roles:
            index[r.account_id, r.name] = index[r.account_id, r.arn] = index["", r.arn] = r
            if r.name.startswith("AWSReservedSSO_"):
                index[r.account_id, r.name.rsplit("_", 1)[0]] = r
        return index

    @property
    def account_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.accounts)


@dataclass(frozen=True)
class Incident:
    """One injected attack; `account_id` is the trail that must show it."""

    kind: str  # one of INCIDENT_KINDS
    at: datetime
    account_id: str
    actor: str  # IAM user name | outside account id | caller session ARN (per kind)
    source_ip: str
    country: str  # what GeoLite2 (2018) says for source_ip
    region: str
    role_arn: str = ""  # the role assumed, for the assume-role kinds


@dataclass(frozen=True)
class GenerateStats:
    files: int = 0
    records: int = 0
    bytes: int = 0  # compressed, on disk
    raw_bytes: int = 0  # the JSON before gzip
    first_event: datetime | None = None
    last_event: datetime | None = None

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.bytes if self.bytes else 0.0


@dataclass(frozen=True)
class Actor:
    """Who calls, from where, and which trail records it."""

    identity: dict
    account_id: str
    ip: str
    agent: str
    tls: bool = True
    console: bool = False


@dataclass(frozen=True)
class DayPlan:
    """Per-day state real people carry: today's NAT address and today's session credentials."""

    ips: dict[str, str]
    keys: dict[tuple[str, str], tuple[str, int]]  # (principal, account) -> (ASIA key, creation time)
    actors: dict[tuple[str, str], Actor] = field(default_factory=dict)  # memo of human_actor


# ------------------------------------------------------------------------------------ random values


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _upper(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(UPPER, k=n))


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(ALNUM, k=n))


def _uuid(rng: random.Random) -> str:
    """A uuid4 string drawn from the seeded generator (uuid.uuid4 would break determinism)."""
    h = f"{rng.getrandbits(128) & UUID_MASK | UUID_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _b64(rng: random.Random, n: int) -> str:
    return base64.b64encode(rng.randbytes(n)).decode()


def _count(rng: random.Random, mean: float) -> int:
    """Integer count with the given mean (floor plus a coin for the fraction)."""
    whole = int(mean)
    return whole + (rng.random() < mean - whole)


# ------------------------------------------------------------------------------------------- time


def _epoch(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp())


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _iso(ts: int) -> str:
    return f"{_minute(ts // 60)}{ts % 60:02d}Z"


@lru_cache(maxsize=4096)
def _minute(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))


def _aws_date(ts: int) -> str:
    """The 'Aug 2, 2021 3:26:43 AM' style STS uses for credential expiry."""
    t = time.gmtime(ts)
    hour = t.tm_hour % 12 or 12
    return f"{MONTHS[t.tm_mon - 1]} {t.tm_mday}, {t.tm_year} {hour}:{t.tm_min:02d}:{t.tm_sec:02d} " + (
        "AM" if t.tm_hour < 12 else "PM"
    )


def _activity(local_hour: int, weekday: int) -> float:
    """How busy a person is at a local hour: office hours, a shoulder, a trickle at night."""
    if 8 <= local_hour < 18:
        w = 1.0
    elif local_hour in (7, 18, 19):
        w = 0.35
    else:
        w = 0.03
    return w if weekday < 5 else w * 0.1


def _user_weight(org: Org, user: User, ts: int) -> float:
    local = ts + org.office(user.office).utc_offset * HOUR
    return _activity(local // HOUR % 24, time.gmtime(local).tm_wday)


def _mean_weight(org: Org) -> float:
    """Average total activity over a week, so events_per_hour stays a mean rate."""
    week0 = 4 * DAY  # 1970-01-05 was a Monday
    total = sum(sum(_user_weight(org, u, week0 + h * HOUR) for u in org.users) for h in range(168))
    return total / 168 or 1.0


def _business_time(rng: random.Random, org: Org, user: User, day: int) -> int:
    """A UTC moment inside the user's local office hours on `day`."""
    return day + (rng.randrange(9 * HOUR, 17 * HOUR) - org.office(user.office).utc_offset * HOUR) % DAY


# ------------------------------------------------------------------------------------------ records


def _host(source: str, region: str, request: dict | None) -> str:
    service = source.split(".", 1)[0]
    if service == "s3":
        bucket = (request or {}).get("bucketName")
        return f"{bucket}.s3.{region}.amazonaws.com" if bucket else "s3.amazonaws.com"
    if service == "iam":
        return "iam.amazonaws.com"
    return f"{service}.{region}.amazonaws.com"


def _agent(agent: str, source: str, name: str) -> str:
    """aws-cli v2 names the command it runs at the end of its user agent."""
    return _cli_agent(agent, source, name) if agent.startswith("aws-cli/") else agent


@lru_cache(maxsize=1024)
def _cli_agent(agent: str, source: str, name: str) -> str:
    words = "".join(f"-{ch.lower()}" if ch.isupper() else ch for ch in name.removesuffix("20150331")).strip("-")
    return f"{agent} md/command#{source.split('.')[0]}.{words}"


def _tls(rng: random.Random, host: str) -> dict:
    if rng.random() < 0.85:
        return {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": host}
    return {"tlsVersion": "TLSv1.2", "cipherSuite": "ECDHE-RSA-AES128-GCM-SHA256", "clientProvidedHostHeader": host}


VERSIONS = {"ec2.amazonaws.com": "1.09", "s3.amazonaws.com": "1.09", "kms.amazonaws.com": "1.09"}


def _record(
    rng: random.Random,
    ts: int,
    actor: Actor,
    region: str,
    source: str,
    name: str,
    request: dict | None,
    response: dict | None,
    *,
    read_only: bool,
    request_id: str | None = None,
    error: tuple[str, str] | None = None,
    extra: dict | None = None,
    resources: list[dict] | None = None,
    shared_event_id: str | None = None,
) -> dict:
    """One management-event record, keys in the order CloudTrail writes them."""
    rec: dict = {
        "eventVersion": VERSIONS.get(source, "1.08"),
        "userIdentity": actor.identity,
        "eventTime": _iso(ts),
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": actor.ip,
        "userAgent": _agent(actor.agent, source, name),
    }
    if error:
        rec["errorCode"], rec["errorMessage"] = error
    rec["requestParameters"] = request
    rec["responseElements"] = response
    if extra:
        rec["additionalEventData"] = extra
    rec["requestID"] = request_id or _uuid(rng)
    rec["eventID"] = _uuid(rng)
    rec["readOnly"] = read_only
    if resources:
        rec["resources"] = resources
    rec["eventType"] = "AwsApiCall"
    rec["managementEvent"] = True
    rec["recipientAccountId"] = actor.account_id
    if shared_event_id:
        rec["sharedEventID"] = shared_event_id
    rec["eventCategory"] = "Management"
    if actor.tls:
        rec["tlsDetails"] = _tls(rng, _host(source, region, request))
    if actor.console:
        rec["sessionCredentialFromConsole"] = "true"
    return rec


# ------------------------------------------------------------------------------------- identities


def iam_user_identity(user: User) -> dict:
    account = user.account_ids[0]
    return {
        "type": "IAMUser",
        "principalId": user.principal_id,
        "arn": f"arn:aws:iam::{account}:user/{user.name}",
        "accountId": account,
        "accessKeyId": user.access_key_id,
        "userName": user.name,
    }


def session_identity(role: Role, session: str, key: str, created: int, invoked_by: str = "") -> dict:
    identity = {
        "type": "AssumedRole",
        "principalId": f"{role.role_id}:{session}",
        "arn": role.session_arn(session),
        "accountId": role.account_id,
        "accessKeyId": key,
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": role.role_id,
                "arn": role.arn,
                "accountId": role.account_id,
                "userName": role.name,
            },
            "webIdFederationData": {},
            "attributes": {"creationDate": _iso(created), "mfaAuthenticated": "false"},
        },
    }
    if invoked_by:
        identity["invokedBy"] = invoked_by
    return identity


def service_identity(service: str) -> dict:
    return {"type": "AWSService", "invokedBy": service}


def root_identity(account_id: str, key: str, created: int) -> dict:
    return {
        "type": "Root",
        "principalId": account_id,
        "arn": f"arn:aws:iam::{account_id}:root",
        "accountId": account_id,
        "accessKeyId": key,
        "sessionContext": {"attributes": {"creationDate": _iso(created), "mfaAuthenticated": "true"}},
    }


def other_account_identity(account_id: str, principal_id: str) -> dict:
    """How the role owner's trail shows a caller from another account (the caller's ARN is not given)."""
    return {"type": "AWSAccount", "principalId": principal_id, "accountId": account_id}


def _parse_session_arn(arn: str) -> tuple[str, str, str]:
    """arn:aws:sts::<account>:assumed-role/<role>/<session> -> (account, role, session)."""
    head, _, rest = arn.partition(":assumed-role/")
    role, _, session = rest.partition("/")
    return head.rsplit(":", 1)[1], role, session


# ----------------------------------------------------------------------------------- API catalogue


@dataclass(frozen=True)
class Ctx:
    """What a request builder may use: randomness, the target account, region, time, request id."""

    rng: random.Random
    account: Account
    region: str
    ts: int
    request_id: str


Build = Callable[[Ctx], tuple[dict | None, dict | None]]


@dataclass(frozen=True)
class Api:
    source: str
    name: str
    read_only: bool
    build: Build

    @property
    def is_global(self) -> bool:
        return self.source == "iam.amazonaws.com"


AMIS = {
    "us-east-1": "ami-0c101f26f147fa7fd",
    "us-west-2": "ami-0395649fbe870727e",
    "eu-central-1": "ami-0f7204385566b32d0",
    "eu-west-1": "ami-0766b4b472db7e3b9",
}
INSTANCE_TYPES = ("t3.medium", "t3.large", "m6i.large", "c6i.xlarge", "t3.micro")


def _empty(_: Ctx) -> tuple[None, None]:
    return None, None


def _page(c: Ctx, token_key: str, size_key: str, size: int) -> dict:
    """SDKs and Terraform page through lists: about a third of list calls carry a continuation token."""
    return {size_key: size, token_key: _b64(c.rng, 120)} if c.rng.random() < 0.35 else {}


def _describe(*keys: str) -> Build:
    def build(c: Ctx) -> tuple[dict, None]:
        return {**{k: {} for k in keys}, "filterSet": {}, **_page(c, "nextToken", "maxResults", 1000)}, None

    return build


def _iam_list(c: Ctx) -> tuple[dict | None, None]:
    return _page(c, "marker", "maxItems", 100) or None, None


def _describe_instances(c: Ctx) -> tuple[dict, None]:
    """Half the time about particular instances, as scripts and the console ask."""
    if c.rng.random() < 0.5:
        return {"instancesSet": {}, "filterSet": {}, **_page(c, "nextToken", "maxResults", 1000)}, None
    items = [{"instanceId": f"i-0{_hex(c.rng, 16)}"} for _ in range(c.rng.randint(1, 3))]
    return {"instancesSet": {"items": items}, "filterSet": {}}, None


def _params(**params: object) -> Build:
    def build(_: Ctx) -> tuple[dict, None]:
        return dict(params), None

    return build


def _bucket_read(key: str) -> Build:
    def build(c: Ctx) -> tuple[dict, None]:
        bucket = c.rng.choice(c.account.buckets)
        return {"bucketName": bucket, "Host": f"{bucket}.s3.{c.region}.amazonaws.com", key: ""}, None

    return build


def _role_read(c: Ctx) -> tuple[dict, None]:
    return {"roleName": c.rng.choice(("app-lambda-role", "ci-deploy", "SecurityAudit", "support-access"))}, None


def _private_ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(0, 4)}.{rng.randrange(0, 256)}.{rng.randrange(4, 255)}"


def _instance_item(c: Ctx, image: str, itype: str, token: str, index: int) -> dict:
    ip = _private_ip(c.rng)
    dns_zone = "ec2.internal" if c.region == "us-east-1" else f"{c.region}.compute.internal"
    return {
        "instanceId": f"i-0{_hex(c.rng, 16)}",
        "imageId": image,
        "currentInstanceBootMode": "legacy-bios",
        "instanceState": {"code": 0, "name": "pending"},
        "privateDnsName": f"ip-{ip.replace('.', '-')}.{dns_zone}",
        "amiLaunchIndex": index,
        "productCodes": {},
        "instanceType": itype,
        "launchTime": c.ts * 1000,
        "placement": {"availabilityZone": f"{c.region}a", "tenancy": "default"},
        "monitoring": {"state": "disabled"},
        "subnetId": c.account.subnet_id,
        "vpcId": c.account.vpc_id,
        "privateIpAddress": ip,
        "stateReason": {"code": "pending", "message": "pending"},
        "architecture": "x86_64",
        "rootDeviceType": "ebs",
        "rootDeviceName": "/dev/xvda",
        "blockDeviceMapping": {},
        "virtualizationType": "hvm",
        "hypervisor": "xen",
        "clientToken": token,
        "sourceDestCheck": True,
        "ebsOptimized": False,
        "enaSupport": True,
        "metadataOptions": {"state": "pending", "httpTokens": "required", "httpPutResponseHopLimit": 2},
    }


def run_instances(count: int = 1, itype: str = "") -> Build:
    """RunInstances with the launched instances (ids included) in the response, as EC2 reports them."""

    def build(c: Ctx) -> tuple[dict, dict]:
        image = AMIS.get(c.region, "ami-0a1b2c3d4e5f67890")
        kind = itype or c.rng.choice(INSTANCE_TYPES)
        token = _uuid(c.rng).upper()
        request = {
            "instancesSet": {"items": [{"imageId": image, "minCount": count, "maxCount": count}]},
            "instanceType": kind,
            "blockDeviceMapping": {},
            "monitoring": {"enabled": False},
            "disableApiTermination": False,
            "disableApiStop": False,
            "clientToken": token,
            "subnetId": c.account.subnet_id,
        }
        items = [_instance_item(c, image, kind, token, i) for i in range(count)]
        response = {
            "requestId": c.request_id,
            "reservationId": f"r-0{_hex(c.rng, 16)}",
            "ownerId": c.account.id,
            "groupSet": {},
            "instancesSet": {"items": items},
        }
        return request, response

    return build


def _instance_state(before: tuple[int, str], after: tuple[int, str]) -> Build:
    def build(c: Ctx) -> tuple[dict, dict]:
        instance = f"i-0{_hex(c.rng, 16)}"
        item = {
            "instanceId": instance,
            "currentState": {"code": after[0], "name": after[1]},
            "previousState": {"code": before[0], "name": before[1]},
        }
        return {"instancesSet": {"items": [{"instanceId": instance}]}}, {
            "requestId": c.request_id,
            "instancesSet": {"items": [item]},
        }

    return build


def _create_tags(c: Ctx) -> tuple[dict, dict]:
    tag = c.rng.choice((("team", "platform"), ("env", c.account.name), ("owner", "data"), ("cost-center", "4711")))
    return {
        "resourcesSet": {"items": [{"resourceId": f"i-0{_hex(c.rng, 16)}"}]},
        "tagSet": {"items": [{"key": tag[0], "value": tag[1]}]},
    }, {"requestId": c.request_id, "_return": True}


def _create_security_group(c: Ctx) -> tuple[dict, dict]:
    name = f"{c.rng.choice(('web', 'api', 'batch', 'db', 'cache'))}-{_hex(c.rng, 6)}"
    return {"groupName": name, "groupDescription": f"{name} managed by terraform", "vpcId": c.account.vpc_id}, {
        "requestId": c.request_id,
        "_return": True,
        "groupId": f"sg-0{_hex(c.rng, 16)}",
    }


def _authorize_ingress(c: Ctx) -> tuple[dict, dict]:
    group = f"sg-0{_hex(c.rng, 16)}"
    port = c.rng.choice((443, 5432, 6379, 8080))
    rule = {"ipProtocol": "tcp", "fromPort": port, "toPort": port}
    request = {
        "groupId": group,
        "ipPermissions": {"items": [{**rule, "groups": {}, "ipRanges": {"items": [{"cidrIp": "10.0.0.0/16"}]}}]},
    }
    response_rule = {
        "groupOwnerId": c.account.id,
        "groupId": group,
        "securityGroupRuleId": f"sgr-0{_hex(c.rng, 16)}",
        "isEgress": False,
        **rule,
        "cidrIpv4": "10.0.0.0/16",
    }
    return request, {"requestId": c.request_id, "_return": True, "securityGroupRuleSet": {"items": [response_rule]}}


def _create_volume(c: Ctx) -> tuple[dict, dict]:
    size = c.rng.choice((20, 50, 100, 200))
    zone = f"{c.region}{c.rng.choice('abc')}"
    return {"size": size, "zone": zone, "volumeType": "gp3", "encrypted": True}, {
        "requestId": c.request_id,
        "volumeId": f"vol-0{_hex(c.rng, 16)}",
        "size": str(size),
        "zone": zone,
        "status": "creating",
        "createTime": c.ts * 1000,
        "volumeType": "gp3",
        "iops": 3000,
        "encrypted": True,
        "multiAttachEnabled": False,
        "throughput": 125,
    }


def create_bucket(name: str = "") -> Build:
    def build(c: Ctx) -> tuple[dict, None]:
        bucket = (
            name or f"{c.account.name}-{c.rng.choice(('exports', 'scratch', 'reports', 'backups'))}-{_hex(c.rng, 8)}"
        )
        request: dict = {"bucketName": bucket, "Host": f"{bucket}.s3.{c.region}.amazonaws.com"}
        if c.region != "us-east-1":
            request["CreateBucketConfiguration"] = {
                "LocationConstraint": c.region,
                "xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
            }
        return request, None

    return build


TRUST = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
    '"Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
)


def _create_role(c: Ctx) -> tuple[dict, dict]:
    name = f"{c.rng.choice(('etl', 'api', 'report', 'sync'))}-lambda-{_hex(c.rng, 6)}"
    role = Role(name, c.account.id, "AROA" + _upper(c.rng, 17))
    return {"roleName": name, "assumeRolePolicyDocument": TRUST}, {
        "role": {"path": "/", "roleName": name, "roleId": role.role_id, "arn": role.arn, "createDate": _aws_date(c.ts)}
    }


def _attach_role_policy(c: Ctx) -> tuple[dict, None]:
    policy = c.rng.choice(("ReadOnlyAccess", "AmazonS3ReadOnlyAccess", "CloudWatchLogsFullAccess"))
    return {"roleName": "app-lambda-role", "policyArn": f"arn:aws:iam::aws:policy/{policy}"}, None


def _create_user(c: Ctx) -> tuple[dict, None]:
    return {"userName": c.rng.choice(("svc-backup", "temp-admin", "contractor"))}, None


def _kms_decrypt(c: Ctx) -> tuple[dict, None]:
    return {"encryptionAlgorithm": "SYMMETRIC_DEFAULT", "keyId": _kms_arn(c.account, c.region)}, None


def _kms_arn(account: Account, region: str) -> str:
    return f"arn:aws:kms:{region}:{account.id}:key/{account.kms_key_id}"


EC2, S3, IAM, STS = "ec2.amazonaws.com", "s3.amazonaws.com", "iam.amazonaws.com", "sts.amazonaws.com"

READS = (
    Api(EC2, "DescribeInstances", True, _describe_instances),
    Api(EC2, "DescribeInstances", True, _describe_instances),
    Api(EC2, "DescribeSecurityGroups", True, _describe("securityGroupSet", "securityGroupIdSet")),
    Api(EC2, "DescribeVolumes", True, _describe("volumeSet")),
    Api(EC2, "DescribeVpcs", True, _describe("vpcSet")),
    Api(EC2, "DescribeSubnets", True, _describe("subnetSet")),
    Api(EC2, "DescribeImages", True, _describe("executableBySet", "imagesSet", "ownersSet")),
    Api(S3, "ListBuckets", True, _params(Host="s3.amazonaws.com")),
    Api(S3, "GetBucketLocation", True, _bucket_read("location")),
    Api(S3, "GetBucketPolicy", True, _bucket_read("policy")),
    Api(S3, "GetBucketAcl", True, _bucket_read("acl")),
    Api(IAM, "ListRoles", True, _iam_list),
    Api(IAM, "GetRole", True, _role_read),
    Api(IAM, "ListAttachedRolePolicies", True, _role_read),
    Api(IAM, "ListUsers", True, _iam_list),
    Api(STS, "GetCallerIdentity", True, _empty),
    Api("lambda.amazonaws.com", "ListFunctions20150331", True, _empty),
    Api("logs.amazonaws.com", "DescribeLogGroups", True, _params(limit=50)),
    Api("rds.amazonaws.com", "DescribeDBInstances", True, _empty),
    Api("monitoring.amazonaws.com", "DescribeAlarms", True, _params(maxRecords=100)),
    Api("cloudformation.amazonaws.com", "DescribeStacks", True, _empty),
)
PROVISIONING = (
    Api(EC2, "RunInstances", False, run_instances()),
    Api(EC2, "StartInstances", False, _instance_state((80, "stopped"), (0, "pending"))),
    Api(S3, "CreateBucket", False, create_bucket()),
    Api(EC2, "CreateSecurityGroup", False, _create_security_group),
    Api(IAM, "CreateRole", False, _create_role),
    Api(EC2, "CreateVolume", False, _create_volume),
    Api(EC2, "CreateTags", False, _create_tags),
)
WRITES = (
    *PROVISIONING,
    Api(EC2, "StopInstances", False, _instance_state((16, "running"), (64, "stopping"))),
    Api(EC2, "AuthorizeSecurityGroupIngress", False, _authorize_ingress),
    Api(IAM, "AttachRolePolicy", False, _attach_role_policy),
)
FAILURES = (
    (Api(IAM, "CreateUser", False, _create_user), "AccessDenied"),
    (Api(S3, "GetBucketPolicy", True, _bucket_read("policy")), "AccessDenied"),
    (Api(IAM, "ListUsers", True, _empty), "AccessDenied"),
    (Api(EC2, "RunInstances", False, run_instances()), "Client.UnauthorizedOperation"),
)
SERVICE_READS = tuple(a for a in READS if a.source == EC2)


@cache
def _pool(kind: str, region: str, global_only: bool = False) -> tuple:
    """The READS/WRITES/FAILURES a call may use in `region` (IAM only in us-east-1)."""
    source = {"read": READS, "write": WRITES, "fail": FAILURES}[kind]
    picked = []
    for item in source:
        api = item[0] if isinstance(item, tuple) else item
        if api.is_global if global_only else region == GLOBAL_REGION or not api.is_global:
            picked.append(item)
    return tuple(picked)


def _denied(rng: random.Random, actor: Actor, api: Api, code: str) -> tuple[str, str]:
    action = f"{api.source.split('.')[0]}:{api.name}"
    message = f"User: {actor.identity.get('arn')} is not authorized to perform: {action}"
    message += f" because no identity-based policy allows the {action} action"
    if code == "Client.UnauthorizedOperation":
        message = (
            f"You are not authorized to perform this operation. {message}. Encoded authorization failure message: "
        )
        message += _b64(rng, 96).replace("+", "-").replace("/", "_")
    return code, message


def _s3_extra(rng: random.Random) -> dict:
    return {
        "SignatureVersion": "SigV4",
        "CipherSuite": "TLS_AES_128_GCM_SHA256",
        "bytesTransferredIn": 0,
        "AuthenticationMethod": "AuthHeader",
        "x-amz-id-2": _b64(rng, 54),
        "bytesTransferredOut": 0,
    }


def call(rng: random.Random, ts: int, actor: Actor, account: Account, region: str, api: Api, error: str = "") -> Event:
    """One API call by `actor` against `account`, as its trail records it."""
    source = api.source
    request_id = _upper(rng, 16) if source == S3 else _uuid(rng)
    request, response = api.build(Ctx(rng, account, region, ts, request_id))
    extra = _s3_extra(rng) if source == S3 else None
    resources = None
    if request and "bucketName" in request and api.name != "CreateBucket":
        arn = f"arn:aws:s3:::{request['bucketName']}"
        resources = [{"accountId": account.id, "type": "AWS::S3::Bucket", "ARN": arn}]
    if source == "kms.amazonaws.com":
        resources = [{"accountId": account.id, "type": "AWS::KMS::Key", "ARN": _kms_arn(account, region)}]
    failure = _denied(rng, actor, api, error) if error else None
    record = _record(
        rng,
        ts,
        actor,
        region,
        source,
        api.name,
        request,
        None if failure else response,
        read_only=api.read_only,
        request_id=request_id,
        error=failure,
        extra=extra,
        resources=resources,
    )
    return ts, actor.account_id, region, record


# -------------------------------------------------------------------------------------- assume role


def assume_role(
    rng: random.Random,
    ts: int,
    caller: Actor,
    role: Role,
    session: str,
    region: str,
    *,
    caller_in_org: bool = True,
    invoked_by: str = "",
) -> list[Event]:
    """AssumeRole as CloudTrail records it: once per involved trail, one sharedEventID, distinct eventIDs.

    The role owner's copy names the caller only as AWSAccount (account + principal id); the
    caller's own trail (if we have it) keeps the full identity. Same-account calls are one record.
    """
    request_id = _uuid(rng)
    request = {"roleArn": role.arn, "roleSessionName": session, "durationSeconds": 3600}
    response: dict = {
        "credentials": {
            "accessKeyId": "ASIA" + _upper(rng, 16),
            "sessionToken": "IQoJb3JpZ2luX2VjE" + _b64(rng, 180),
            "expiration": _aws_date(ts + 3600),
        }
    }
    if not invoked_by:
        response["assumedRoleUser"] = {"assumedRoleId": f"{role.role_id}:{session}", "arn": role.session_arn(session)}
    resources = [{"accountId": role.account_id, "type": "AWS::IAM::Role", "ARN": role.arn}]
    caller_account = caller.identity.get("accountId", role.account_id)
    cross = bool(invoked_by) or caller_account != role.account_id
    shared = _uuid(rng) if cross else None

    def copy(actor: Actor) -> Event:
        rec = _record(
            rng,
            ts,
            actor,
            region,
            STS,
            "AssumeRole",
            request,
            response,
            read_only=True,
            request_id=request_id,
            resources=resources,
            shared_event_id=shared,
        )
        return ts, actor.account_id, region, rec

    if not cross:
        return [copy(replace(caller, account_id=role.account_id))]
    owner_identity = caller.identity
    if caller_account != role.account_id:
        owner_identity = other_account_identity(caller_account, caller.identity.get("principalId", ""))
    events = [copy(replace(caller, identity=owner_identity, account_id=role.account_id))]
    if caller_account != role.account_id and caller_in_org:
        events.insert(0, copy(replace(caller, account_id=caller_account)))
    return events


def service_assume_role(rng: random.Random, ts: int, service: str, role: Role, session: str, region: str) -> Event:
    """An AWS service (EC2, Lambda, ...) taking a role in our account: noise every real trail has."""
    actor = Actor(service_identity(service), role.account_id, service, service, tls=False)
    return assume_role(rng, ts, actor, role, session, region, invoked_by=service)[0]


# ------------------------------------------------------------------------------------ the demo org


OFFICES = (
    Office("berlin", "DE", "Berlin", 1, "85.214.132.0/24", ("85.214.132.17", "85.214.132.18", "85.214.132.45")),
    Office("london", "GB", "London", 0, "81.2.69.0/24", ("81.2.69.142", "81.2.69.160", "81.2.69.192")),
    Office("dublin", "IE", "Dublin", 0, "89.101.20.0/24", ("89.101.20.40", "89.101.20.41")),
    Office("new-york", "US", "New York", -5, "98.113.40.0/24", ("98.113.40.20", "98.113.40.21", "98.113.40.90")),
)
# Addresses outside every office (GeoLite2 2018 countries checked in tests/test_generate.py).
INCIDENT_IPS = {
    "new_country_provisioning": ("177.72.10.77", "BR"),
    "outside_account_assume_role": ("95.165.20.33", "RU"),
    "role_chaining_new_account": ("3.120.10.20", "DE"),  # the CI runner's own EC2 address
}
CI_RUNNER_IP = "3.120.10.20"  # AWS eu-central-1, GeoLite2: DE Frankfurt
SCANNER_IP = "54.236.12.40"  # AWS us-east-1, GeoLite2: US Ashburn

AGENTS = {
    "cli": "aws-cli/2.15.30 md/awscrt#0.19.19 ua/2.0 os/linux#6.5.0-26-generic md/arch#x86_64 lang/python#3.11.8 "
    "md/pyimpl#CPython cfg/retry-mode#standard md/installer#exe md/distrib#ubuntu.22 md/prompt#off",
    "terraform": "APN/1.0 HashiCorp/1.0 Terraform/1.7.4 (+https://www.terraform.io) terraform-provider-aws/5.40.0 "
    "(+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.25.2 os/linux lang/go#1.21.8 "
    "md/GOOS#linux md/GOARCH#amd64",
    "boto3": "Boto3/1.34.60 md/Botocore#1.34.60 ua/2.0 os/macos#23.3.0 md/arch#arm64 lang/python#3.12.2 "
    "md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.60",
    "console": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.0.0 Safari/537.36",
    "sdk-java": "aws-sdk-java/2.25.6 Linux/6.1.79-99.164.amzn2023.x86_64 OpenJDK_64-Bit_Server_VM/17.0.10+8-LTS "
    "Java/17.0.10 vendor/Amazon.com_Inc. io/sync http/Apache cfg/retry-mode/legacy",
}
ATTACKER_AGENT = "Boto3/1.26.0 Python/3.8.10 Linux/5.4.0-150-generic Botocore/1.29.0"


def _account(
    rng: random.Random, acct_id: str, name: str, regions: tuple[str, ...], buckets: tuple[str, ...]
) -> Account:
    return Account(
        id=acct_id,
        name=name,
        regions=regions,
        buckets=tuple(f"northwind-{name}-{b}-{acct_id}" for b in buckets),
        vpc_id=f"vpc-0{_hex(rng, 16)}",
        subnet_id=f"subnet-0{_hex(rng, 16)}",
        kms_key_id=_uuid(rng),
    )


def _roles(rng: random.Random, accounts: Sequence[Account], security: str) -> tuple[Role, ...]:
    """Every account's roles: SSO permission sets, audit and admin roles, service-linked roles."""
    roles: list[Role] = []

    def add(name: str, acct: str, path: str = "/") -> None:
        roles.append(Role(name, acct, "AROA" + _upper(rng, 17), path))

    for a in accounts:
        for permission_set in ("AdministratorAccess", "PowerUserAccess"):
            add(
                f"AWSReservedSSO_{permission_set}_{_hex(rng, 16)}",
                a.id,
                f"/aws-reserved/sso.amazonaws.com/{a.regions[0]}/",
            )
        add("AWSServiceRoleForConfig", a.id, "/aws-service-role/config.amazonaws.com/")
        add("app-lambda-role", a.id, "/service-role/")
        add("app-instance-role", a.id)
        if a.id != security:
            add("SecurityAudit", a.id)
            add("OrganizationAccountAccessRole", a.id)
    by_name = {a.name: a.id for a in accounts}
    add("support-access", by_name["prod"])
    add("AWSServiceRoleForAutoScaling", by_name["prod"], "/aws-service-role/autoscaling.amazonaws.com/")
    add("ci-deploy", by_name["staging"])
    add("security-scanner", security)
    return tuple(roles)


def _iam_user(rng: random.Random, name: str, account: str, office: str, agent: str) -> User:
    return User(name, "iam", (account,), office, AGENTS[agent], "AIDA" + _upper(rng, 17), "AKIA" + _upper(rng, 16))


def _sso_user(name: str, accounts: tuple[str, ...], office: str, agent: str, permission_set: str) -> User:
    return User(name, "sso", accounts, office, AGENTS[agent], permission_set=f"AWSReservedSSO_{permission_set}")


def demo_org(seed: int = 7) -> Org:
    """Four accounts, four offices (DE, GB, IE, US), eight people, a CI runner and a security scanner.

    Account ids and addresses are fixed; key and role ids come from the seed.
    """
    rng = random.Random(f"org-{seed}")
    mgmt, prod, staging, sec = "314159265358", "271828182845", "161803398874", "141421356237"
    accounts = (
        _account(rng, mgmt, "management", ("us-east-1",), ("billing", "org-config")),
        _account(rng, prod, "prod", ("eu-central-1", "us-east-1"), ("assets", "uploads", "app-logs")),
        _account(rng, staging, "staging", ("eu-central-1",), ("assets", "artifacts")),
        _account(rng, sec, "security", ("us-east-1", "eu-central-1"), ("cloudtrail", "findings")),
    )
    roles = _roles(rng, accounts, sec)
    users = (
        _iam_user(rng, "maria.schmidt", prod, "berlin", "terraform"),
        _iam_user(rng, "james.walker", prod, "london", "cli"),
        _iam_user(rng, "michael.brooks", staging, "new-york", "cli"),
        _iam_user(rng, "sean.obrien", mgmt, "dublin", "cli"),
        _sso_user("jonas.weber", (prod, staging), "berlin", "console", "AdministratorAccess"),
        _sso_user("priya.nair", (sec, prod), "london", "boto3", "PowerUserAccess"),
        _sso_user("emily.chen", (staging, prod), "new-york", "console", "PowerUserAccess"),
        _sso_user("aoife.byrne", (mgmt, sec), "dublin", "console", "AdministratorAccess"),
    )
    audit_targets = tuple(r.arn for r in roles if r.name == "SecurityAudit")
    machines = (
        Machine("ci-runner", staging, "ci-deploy", f"i-0{_hex(rng, 16)}", CI_RUNNER_IP, "eu-central-1"),
        Machine("scanner", sec, "security-scanner", f"i-0{_hex(rng, 16)}", SCANNER_IP, "us-east-1", audit_targets),
    )
    org_id = "o-" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=10))
    return Org(org_id, accounts, OFFICES, users, roles, machines, sec, admin_user="sean.obrien")


def make_incident(org: Org, kind: str, at: datetime) -> Incident:
    """The demo org's version of each incident kind (who, from where, against which account)."""
    if kind not in INCIDENT_IPS:
        raise ValueError(f"unknown incident kind {kind!r}; expected one of {INCIDENT_KINDS}")
    ip, country = INCIDENT_IPS[kind]
    prod = org.account("prod")
    if kind == "new_country_provisioning":
        return Incident(kind, at, prod.id, "maria.schmidt", ip, country, prod.regions[0])
    if kind == "outside_account_assume_role":
        role = org.role(prod.id, "support-access")
        return Incident(kind, at, prod.id, OUTSIDE_ACCOUNT, ip, country, prod.regions[0], role.arn)
    ci = org.machine("ci-runner")
    caller = org.role(ci.account_id, ci.role).session_arn(ci.instance_id)
    role = org.role(prod.id, "OrganizationAccountAccessRole")
    return Incident(kind, at, prod.id, caller, ip, country, ci.region, role.arn)


INCIDENT_OFFSETS = (46, 30, 14)  # hours before `end` in a 48-hour window: inside it, clear of each other


def month_with_incidents(
    end: datetime, days: int = 30, seed: int = 7, within_hours: int = 48
) -> tuple[Org, list[Incident]]:
    """The demo org and one incident of each kind, all within the last `within_hours` (2 days) before `end`.

    A shorter window keeps the incidents' spacing in proportion, so a quick run still sees all three.
    """
    if within_hours < 4:
        raise ValueError("the incidents need a window of at least 4 hours")
    if days * DAY < within_hours * HOUR:
        raise ValueError(f"days must cover the last {within_hours} hours, where the incidents are")
    rng = random.Random(f"incidents-{seed}")
    org = demo_org(seed)
    end_ts = _epoch(end) // 60 * 60
    incidents = [
        make_incident(org, kind, _dt(end_ts - hours * within_hours * HOUR // 48 + rng.randrange(0, 50) * 60))
        for kind, hours in zip(INCIDENT_KINDS, INCIDENT_OFFSETS, strict=True)
    ]
    return org, incidents


# ----------------------------------------------------------------------------------------- activity


def day_plan(rng: random.Random, org: Org, day: int) -> DayPlan:
    """Today's office address per person and today's session keys per (principal, account).

    Sessions are created shortly before midnight UTC so that creationDate precedes every call of the day.
    """
    ips = {u.name: rng.choice(org.office(u.office).ips) for u in org.users}
    principals = [(u.name, acct) for u in org.users for acct in u.account_ids]
    principals += [(m.name, m.account_id) for m in org.machines] + [("config", a.id) for a in org.accounts]
    keys = {p: ("ASIA" + _upper(rng, 16), day - rng.randrange(60, HOUR)) for p in principals}
    return DayPlan(ips, keys)


def human_actor(org: Org, plan: DayPlan, user: User, account_id: str) -> Actor:
    """The person as today's calls show them; memoised in the plan (one identity per day and account)."""
    actor = plan.actors.get((user.name, account_id))
    if actor is None:
        actor = plan.actors[user.name, account_id] = _human_actor(org, plan, user, account_id)
    return actor


def _human_actor(org: Org, plan: DayPlan, user: User, account_id: str) -> Actor:
    ip = plan.ips[user.name]
    console = user.user_agent == AGENTS["console"]
    if user.kind == "iam":
        return Actor(iam_user_identity(user), account_id, ip, user.user_agent)
    key, created = plan.keys[user.name, account_id]
    identity = session_identity(org.sso_role(account_id, user.permission_set), user.name, key, created)
    return Actor(identity, account_id, ip, user.user_agent, console=console)


def machine_actor(org: Org, plan: DayPlan, machine: Machine) -> Actor:
    key, created = plan.keys[machine.name, machine.account_id]
    role = org.role(machine.account_id, machine.role)
    identity = session_identity(role, machine.instance_id, key, created)
    return Actor(identity, machine.account_id, machine.ip, AGENTS["sdk-java" if machine.name == "scanner" else "cli"])


def _pick_api(rng: random.Random, region: str, global_only: bool = False) -> tuple[Api, str]:
    """Mostly reads, some writes, a few denied calls; `global_only` for a region the account does not use."""
    roll = rng.random()
    if roll < 0.96:
        return rng.choice(_pool("read" if roll < 0.80 else "write", region, global_only)), ""
    return rng.choice(_pool("fail", region, global_only))


def human_event(
    rng: random.Random, org: Org, plan: DayPlan, ts: int, user: User, account_id: str = "", region: str = ""
) -> Event:
    """A person's everyday call: mostly reads, some writes, now and then an AccessDenied."""
    account = org.account(account_id or rng.choice(user.account_ids))
    region = region or rng.choice((*account.regions, GLOBAL_REGION))
    api, error = _pick_api(rng, region, region not in account.regions)
    return call(rng, ts, human_actor(org, plan, user, account.id), account, region, api, error)


def service_event(
    rng: random.Random, org: Org, plan: DayPlan, ts: int, account_id: str = "", region: str = ""
) -> Event:
    """AWS acting on its own: Config describing, services taking roles, KMS from 'AWS Internal'."""
    account = org.account(account_id) if account_id else rng.choice(org.accounts)
    region = region or rng.choice(account.regions)
    roll = rng.random()
    if roll < 0.45:
        role = org.role(account.id, "AWSServiceRoleForConfig")
        key, created = plan.keys["config", account.id]
        identity = session_identity(role, "AWSConfig-Describe", key, created, invoked_by="config.amazonaws.com")
        actor = Actor(identity, account.id, "config.amazonaws.com", "config.amazonaws.com", tls=False)
        return call(rng, ts, actor, account, region, rng.choice(SERVICE_READS))
    if roll < 0.70:
        role = org.role(account.id, "app-lambda-role")
        return service_assume_role(rng, ts, "lambda.amazonaws.com", role, f"awslambda_{_hex(rng, 6)}", region)
    if roll < 0.90:
        role = org.role(account.id, "app-lambda-role")
        identity = session_identity(role, f"awslambda_{_hex(rng, 6)}", "ASIA" + _upper(rng, 16), ts - 600)
        actor = Actor(identity, account.id, "AWS Internal", "AWS Internal", tls=False)
        return call(rng, ts, actor, account, region, Api("kms.amazonaws.com", "Decrypt", True, _kms_decrypt))
    actor = Actor(service_identity("cloudtrail.amazonaws.com"), account.id, *(["cloudtrail.amazonaws.com"] * 2))
    actor = replace(actor, tls=False)
    return call(rng, ts, actor, account, region, Api(S3, "GetBucketAcl", True, _bucket_read("acl")))


def window_events(
    rng: random.Random, org: Org, plan: DayPlan, start: int, per_hour: float, mean_w: float
) -> list[Event]:
    """Background activity for one 5-minute window, people weighted by their local office hours."""
    weights = [_user_weight(org, u, start) for u in org.users]
    humans = _count(rng, per_hour * HUMAN_SHARE / 12 * sum(weights) / mean_w)
    services = _count(rng, per_hour * (1 - HUMAN_SHARE) / 12)
    events = [
        human_event(rng, org, plan, start + rng.randrange(WINDOW), user)
        for user in (rng.choices(org.users, weights, k=humans) if humans else [])
    ]
    events += [service_event(rng, org, plan, start + rng.randrange(WINDOW)) for _ in range(services)]
    return events


def _provisioning(rng: random.Random, org: Org, plan: DayPlan, day: int, weekday: int) -> list[Event]:
    """Every person provisions something from the office on working days (the country baseline)."""
    events: list[Event] = []
    for user in org.users:
        n = rng.randint(2, 3) if weekday < 5 else int(rng.random() < 0.15)
        for _ in range(n):
            account = org.account(rng.choice(user.account_ids))
            api = rng.choice(PROVISIONING)
            region = GLOBAL_REGION if api.is_global else rng.choice(account.regions)
            actor = human_actor(org, plan, user, account.id)
            events.append(call(rng, _business_time(rng, org, user, day), actor, account, region, api))
    return events


def _scanner_runs(rng: random.Random, org: Org, plan: DayPlan, day: int) -> list[Event]:
    """Every 6 hours the security scanner chains into each account's SecurityAudit role and reads."""
    scanner = org.machine("scanner")
    actor = machine_actor(org, plan, scanner)
    own_role = org.role(scanner.account_id, scanner.role)
    events: list[Event] = []
    for run in range(4):
        ts = day + run * 6 * HOUR + 20 * 60 + rng.randrange(0, 540)
        events.append(
            service_assume_role(rng, ts - 30, "ec2.amazonaws.com", own_role, scanner.instance_id, scanner.region)
        )
        for arn in scanner.assumes:
            role = org.role_by_arn(arn)
            session = f"scanner-{_hex(rng, 8)}"
            ts += rng.randrange(2, 20)
            events += assume_role(rng, ts, actor, role, session, scanner.region)
            target = org.account(role.account_id)
            identity = session_identity(role, session, "ASIA" + _upper(rng, 16), ts)
            inside = Actor(identity, target.id, scanner.ip, actor.agent)
            for _ in range(rng.randint(3, 6)):
                ts += rng.randrange(1, 15)
                region = rng.choice(target.regions)
                events.append(call(rng, ts, inside, target, region, rng.choice(_pool("read", region))))
    return events


def _ci_runs(rng: random.Random, org: Org, plan: DayPlan, day: int, weekday: int) -> list[Event]:
    """The CI runner deploys to staging through the working day, from its EC2 address."""
    ci = org.machine("ci-runner")
    actor = machine_actor(org, plan, ci)
    account = org.account(ci.account_id)
    own_role = org.role(ci.account_id, ci.role)
    events = [
        service_assume_role(rng, day + h * HOUR + 300, "ec2.amazonaws.com", own_role, ci.instance_id, ci.region)
        for h in (0, 6, 12, 18)
    ]
    if weekday >= 5:
        return events
    for hour in range(7, 19):
        ts = day + hour * HOUR + rng.randrange(0, HOUR - 600)
        for api in (READS[0], rng.choice(PROVISIONING[:2] + PROVISIONING[3:4]), PROVISIONING[-1]):
            ts += rng.randrange(2, 40)
            events.append(call(rng, ts, actor, account, ci.region, api))
    return events


def _admin_hop(rng: random.Random, org: Org, plan: DayPlan, day: int, weekday: int) -> list[Event]:
    """The management account's admin (an IAM user) switches into staging on working days."""
    if not org.admin_user or weekday >= 5:
        return []
    user = org.user(org.admin_user)
    actor = human_actor(org, plan, user, user.account_ids[0])
    target = org.account("staging")
    role = org.role(target.id, "OrganizationAccountAccessRole")
    ts = _business_time(rng, org, user, day)
    events = assume_role(rng, ts, actor, role, user.name, GLOBAL_REGION)
    identity = session_identity(role, user.name, "ASIA" + _upper(rng, 16), ts)
    inside = Actor(identity, target.id, actor.ip, actor.agent)
    for _ in range(rng.randint(2, 4)):
        ts += rng.randrange(5, 90)
        events.append(call(rng, ts, inside, target, target.regions[0], rng.choice(_pool("read", target.regions[0]))))
    return events


def _root_and_autoscaling(rng: random.Random, org: Org, plan: DayPlan, day: int) -> list[Event]:
    """Rare root console reads in management; autoscaling launching instances in prod."""
    events: list[Event] = []
    mgmt = org.account("management")
    if rng.random() < 0.1:
        ts = day + 10 * HOUR + rng.randrange(HOUR)
        actor = Actor(
            root_identity(mgmt.id, "ASIA" + _upper(rng, 16), ts - 120),
            mgmt.id,
            plan.ips[org.admin_user or org.users[0].name],
            AGENTS["console"],
            console=True,
        )
        events.append(call(rng, ts, actor, mgmt, GLOBAL_REGION, Api(IAM, "GetAccountSummary", True, _empty)))
    prod = org.account("prod")
    role = org.role(prod.id, "AWSServiceRoleForAutoScaling")
    for _ in range(rng.randint(2, 4)):
        ts = day + rng.randrange(DAY)
        identity = session_identity(
            role, "AutoScaling", "ASIA" + _upper(rng, 16), ts - 5, invoked_by="autoscaling.amazonaws.com"
        )
        actor = Actor(identity, prod.id, "autoscaling.amazonaws.com", "autoscaling.amazonaws.com", tls=False)
        events.append(call(rng, ts, actor, prod, prod.regions[0], PROVISIONING[0]))
    return events


def daily_events(rng: random.Random, org: Org, plan: DayPlan, day: int) -> list[Event]:
    """The scheduled part of a day: provisioning, audits, CI, admin hops, service jobs."""
    weekday = time.gmtime(day).tm_wday
    return [
        *_provisioning(rng, org, plan, day, weekday),
        *_scanner_runs(rng, org, plan, day),
        *_ci_runs(rng, org, plan, day, weekday),
        *_admin_hop(rng, org, plan, day, weekday),
        *_root_and_autoscaling(rng, org, plan, day),
    ]


# ----------------------------------------------------------------------------------------- incidents


def _steps(
    rng: random.Random, start: int, actor: Actor, account: Account, region: str, apis: Sequence[Api]
) -> list[Event]:
    events, ts = [], start
    for api in apis:
        ts += rng.randrange(3, 40)
        events.append(call(rng, ts, actor, account, region, api))
    return events


def _recon() -> tuple[Api, ...]:
    return (
        Api(STS, "GetCallerIdentity", True, _empty),
        Api(S3, "ListBuckets", True, _params(Host="s3.amazonaws.com")),
        READS[0],
        READS[2],
    )


def incident_events(rng: random.Random, org: Org, incident: Incident) -> list[Event]:
    """The records one incident leaves in our trails."""
    ts = _epoch(incident.at)
    account = org.account(incident.account_id)
    if incident.kind == "new_country_provisioning":
        user = org.user(incident.actor)
        identity = (
            iam_user_identity(user)
            if user.kind == "iam"
            else session_identity(
                org.sso_role(account.id, user.permission_set), user.name, "ASIA" + _upper(rng, 16), ts - 60
            )
        )
        actor = Actor(identity, account.id, incident.source_ip, ATTACKER_AGENT)
        apis = (
            *_recon(),
            Api(EC2, "RunInstances", False, run_instances(3, "p3.2xlarge")),
            Api(S3, "CreateBucket", False, create_bucket(f"exfil-{_hex(rng, 10)}")),
            READS[4],
        )
        return _steps(rng, ts, actor, account, incident.region, apis)
    role = org.role_by_arn(incident.role_arn)
    if incident.kind == "outside_account_assume_role":
        caller = Actor(
            {"type": "IAMUser", "principalId": "AIDA" + _upper(rng, 17), "accountId": incident.actor},
            incident.actor,
            incident.source_ip,
            ATTACKER_AGENT,
        )
        session = f"vendor-{_hex(rng, 6)}"
        events = assume_role(rng, ts, caller, role, session, incident.region, caller_in_org=False)
    elif incident.kind == "role_chaining_new_account":
        caller_account, caller_role, caller_session = _parse_session_arn(incident.actor)
        source_role = org.role(caller_account, caller_role)
        identity = session_identity(source_role, caller_session, "ASIA" + _upper(rng, 16), ts - 1800)
        caller = Actor(identity, caller_account, incident.source_ip, AGENTS["cli"])
        session = f"ci-{_hex(rng, 8)}"
        events = assume_role(rng, ts, caller, role, session, incident.region)
    else:
        raise ValueError(f"unknown incident kind {incident.kind!r}")
    inside = Actor(
        session_identity(role, session, "ASIA" + _upper(rng, 16), ts), role.account_id, incident.source_ip, caller.agent
    )
    target = org.account(role.account_id)
    return events + _steps(rng, ts, inside, target, incident.region, (*_recon(), _bucket_api()))


def _bucket_api() -> Api:
    return Api(S3, "GetBucketPolicy", True, _bucket_read("policy"))


# ------------------------------------------------------------------------------------------ writing


def log_key(account: str, region: str, delivered: int, suffix: str) -> str:
    """The S3 key CloudTrail uses: AWSLogs/<acct>/CloudTrail/<region>/YYYY/MM/DD/<acct>_CloudTrail_..."""
    t = time.gmtime(delivered)
    stamp = time.strftime("%Y%m%dT%H%MZ", t)
    folder = time.strftime("%Y/%m/%d", t)
    return f"AWSLogs/{account}/CloudTrail/{region}/{folder}/{account}_CloudTrail_{region}_{stamp}_{suffix}.json.gz"


def _compress_to(path: Path, payload: bytes, mtime: int) -> int:
    data = gzip.compress(payload, compresslevel=6, mtime=mtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def write_records(
    out: str | Path, account: str, region: str, delivered_at: datetime, records: Sequence[dict], rng: random.Random
) -> Path:
    """Write one delivery file by hand (tests use it to craft odd cases)."""
    delivered = _epoch(delivered_at)
    path = Path(out) / log_key(account, region, delivered, _alnum(rng, 16))
    _compress_to(path, orjson.dumps({"Records": list(records)}), delivered)
    return path


@dataclass
class _Sink:
    """Collects delivery files; gzip runs in threads (zlib drops the GIL) while records are built."""

    out: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))))
    pending: list[Future[int]] = field(default_factory=list)
    stats: GenerateStats = field(default_factory=GenerateStats)
    compressed: int = 0
    first: int | None = None
    last: int | None = None

    def add(self, rng: random.Random, account: str, region: str, delivered: int, events: Sequence[Event]) -> None:
        records = [e[3] for e in sorted(events, key=lambda e: e[0])]
        payload = orjson.dumps({"Records": records})
        path = self.out / log_key(account, region, delivered, _alnum(rng, 16))
        self.pending.append(self.pool.submit(_compress_to, path, payload, delivered))
        lo, hi = min(e[0] for e in events), max(e[0] for e in events)
        self.first = lo if self.first is None else min(self.first, lo)
        self.last = hi if self.last is None else max(self.last, hi)
        s = self.stats
        self.stats = replace(
            s, files=s.files + 1, records=s.records + len(records), raw_bytes=s.raw_bytes + len(payload)
        )
        if len(self.pending) > 8:
            self.compressed += sum(f.result() for f in self.pending[:4])
            del self.pending[:4]

    def deliver(self, rng: random.Random, events: Sequence[Event], parts: int = 1) -> None:
        """Group events per (account, region, 5-minute window) and deliver each group 5-10 min after."""
        groups: dict[tuple[str, str, int], list[Event]] = defaultdict(list)
        for e in events:
            groups[e[1], e[2], e[0] // WINDOW * WINDOW].append(e)
        for (account, region, window), group in sorted(groups.items()):
            delivered = window + WINDOW + 60 * rng.randint(*DELAY_MINUTES)
            for chunk in _split(group, parts):
                self.add(rng, account, region, delivered, chunk)

    def close(self) -> GenerateStats:
        self.compressed += sum(f.result() for f in self.pending)
        self.pending.clear()
        self.pool.shutdown()
        first = _dt(self.first) if self.first is not None else None
        last = _dt(self.last) if self.last is not None else None
        return replace(self.stats, bytes=self.compressed, first_event=first, last_event=last)


def _split(items: Sequence[Event], parts: int) -> Iterator[Sequence[Event]]:
    size = math.ceil(len(items) / parts) or 1
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ------------------------------------------------------------------------------------------ public


def generate(
    out: str | Path,
    start: datetime,
    end: datetime,
    org: Org,
    incidents: Sequence[Incident] = (),
    seed: int = 7,
    events_per_hour: int | None = None,
) -> GenerateStats:
    """Write [start, end) of the org's CloudTrail under `out`, plus the incidents that fall inside.

    `events_per_hour` is the mean background rate (people follow office hours, services don't);
    scheduled jobs and incidents come on top. The same arguments give the same records.
    """
    rng = random.Random(seed)
    t0, t1 = _epoch(start), _epoch(end)
    per_hour = DEFAULT_EVENTS_PER_HOUR if events_per_hour is None else events_per_hour
    plans = {day: day_plan(rng, org, day) for day in range(t0 // DAY * DAY, t1, DAY)}
    scheduled: dict[int, list[Event]] = defaultdict(list)
    for day, plan in plans.items():
        for e in daily_events(rng, org, plan, day):
            scheduled[e[0] // WINDOW * WINDOW].append(e)
    for incident in incidents:
        if t0 <= _epoch(incident.at) < t1:
            for e in incident_events(rng, org, incident):
                scheduled[e[0] // WINDOW * WINDOW].append(e)
    mean_w = _mean_weight(org)
    sink = _Sink(Path(out))
    try:
        for window in range(t0 // WINDOW * WINDOW, t1, WINDOW):
            plan = plans[window // DAY * DAY]
            events = window_events(rng, org, plan, window, per_hour, mean_w) + scheduled.pop(window, [])
            sink.deliver(rng, [e for e in events if t0 <= e[0] < t1])
    finally:
        stats = sink.close()
    return stats


@dataclass(frozen=True)
class Trail:
    """What ``generate_trail`` wrote: where, which range, and the incidents hidden in it."""

    out: Path
    start: datetime
    end: datetime
    seed: int
    events_per_hour: int
    stats: GenerateStats
    incidents: tuple[Incident, ...]


def last_full_hour(now: datetime | None = None) -> datetime:
    """The default end of a trail: generated data then looks like today's."""
    return (now or datetime.now(timezone.utc)).replace(minute=0, second=0, microsecond=0)


def generate_trail(
    out: str | Path,
    days: int = 30,
    end: datetime | None = None,
    seed: int = 7,
    events_per_hour: int = DEFAULT_EVENTS_PER_HOUR,
    incidents: bool = True,
    incident_hours: int = 48,
) -> Trail:
    """The demo organisation's CloudTrail for the `days` before `end`, the three incidents in its last
    `incident_hours`; a manifest (``trailguard-generate.json``) beside ``AWSLogs/`` says what it holds.

    What ``trailguard generate`` runs: test data anyone can make, the same for the same arguments.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if events_per_hour < 0:
        raise ValueError("events_per_hour must not be negative")
    end = last_full_hour() if end is None else end.astimezone(timezone.utc)
    start = end - timedelta(days=days)
    org, chosen = month_with_incidents(end, days, seed, incident_hours) if incidents else (demo_org(seed), [])
    stats = generate(out, start, end, org, chosen, seed=seed, events_per_hour=events_per_hour)
    trail = Trail(Path(out), start, end, seed, events_per_hour, stats, tuple(chosen))
    (trail.out / MANIFEST).write_bytes(orjson.dumps(manifest(trail), option=orjson.OPT_INDENT_2))
    return trail


def manifest(trail: Trail) -> dict:
    """What a generated trail holds, for people and for ``make airflow``'s instructions."""
    return {
        "start": trail.start.isoformat(),
        "end": trail.end.isoformat(),
        "seed": trail.seed,
        "events_per_hour": trail.events_per_hour,
        "objects": trail.stats.files,
        "records": trail.stats.records,
        "incidents": [
            {
                "kind": i.kind,
                "at": i.at.isoformat(),
                "account_id": i.account_id,
                "actor": i.actor,
                "source_ip": i.source_ip,
                "country": i.country,
            }
            for i in trail.incidents
        ],
    }


def describe_trail(trail: Trail) -> list[str]:
    """The lines ``trailguard generate`` prints: what was written and what should alert."""
    s = trail.stats
    lines = [
        f"wrote {s.files:,} CloudTrail objects ({s.records:,} records, {s.bytes / 1e6:.1f} MB gzip) to {trail.out}",
        f"events {trail.start:%Y-%m-%dT%H:%MZ} .. {trail.end:%Y-%m-%dT%H:%MZ} (seed {trail.seed}, "
        f"{trail.events_per_hour} background events an hour, plus daily jobs)",
    ]
    if trail.incidents:
        lines.append("incidents, each one alert once baselines cover the time before it:")
        lines += [
            f"  {i.at:%Y-%m-%dT%H:%MZ}  {i.kind:<28}  {i.actor} from {i.source_ip} ({i.country})"
            for i in trail.incidents
        ]
    lines.append(f"ingest it: trailguard ingest --source {trail.out}")
    return lines


BENCH_REGIONS = ("us-east-1", "eu-central-1", "eu-west-1", "us-west-2")


def _bench_streams(org: Org, files: int) -> list[tuple[str, str]]:
    """Enough (account, region) trails that one file per trail per window reaches `files`."""
    every = [(a.id, r) for r in BENCH_REGIONS for a in org.accounts]
    return every[: min(len(every), max(4, math.ceil(files / 12)))]


def benchmark_hour(
    out: str | Path, hour: datetime, events: int = 200_000, files: int = 120, seed: int = 1
) -> GenerateStats:
    """One busy hour: >= `events` records in >= `files` delivery files across accounts and regions."""
    rng = random.Random(seed)
    base = demo_org(seed)
    org = replace(base, accounts=tuple(replace(a, regions=BENCH_REGIONS) for a in base.accounts))
    h0 = _epoch(hour) // HOUR * HOUR
    streams = _bench_streams(org, files)
    parts = math.ceil(files / (12 * len(streams)))
    batches = 12 * len(streams)
    plan = day_plan(rng, org, h0 // DAY * DAY)
    people = {a.id: [u for u in org.users if a.id in u.account_ids] for a in org.accounts}
    machines = workloads(rng, org, h0)
    sink = _Sink(Path(out))
    try:
        for w in range(12):
            start = h0 + w * WINDOW
            for s, (account, region) in enumerate(streams):
                n = events // batches + (w * len(streams) + s < events % batches)
                batch = [
                    _bench_event(
                        rng, org, plan, start + rng.randrange(WINDOW), people[account], machines[account], region
                    )
                    for _ in range(n)
                ]
                sink.deliver(rng, batch, parts)
    finally:
        stats = sink.close()
    return stats


def workloads(rng: random.Random, org: Org, ts: int, per_account: int = 80) -> dict[str, list[Actor]]:
    """A busy hour is mostly machines: EC2 instance-role sessions, each with its own key and address."""
    agents = (AGENTS["sdk-java"], AGENTS["boto3"], AGENTS["terraform"])
    crowd: dict[str, list[Actor]] = {}
    for a in org.accounts:
        role = org.role(a.id, "app-instance-role")
        crowd[a.id] = [
            Actor(
                session_identity(role, f"i-0{_hex(rng, 16)}", "ASIA" + _upper(rng, 16), ts - rng.randrange(6 * HOUR)),
                a.id,
                _private_ip(rng),
                rng.choice(agents),
            )
            for _ in range(per_account)
        ]
    return crowd


def _bench_event(
    rng: random.Random, org: Org, plan: DayPlan, ts: int, people: list[User], machines: list[Actor], region: str
) -> Event:
    """Busy-hour mix: people 40%, workloads 40%, AWS services 20%."""
    account = machines[0].account_id
    roll = rng.random()
    if roll < 0.4:
        return human_event(rng, org, plan, ts, rng.choice(people), account, region)
    if roll < 0.8:
        api, error = _pick_api(rng, region)
        return call(rng, ts, rng.choice(machines), org.account(account), region, api, error)
    return service_event(rng, org, plan, ts, account, region)
