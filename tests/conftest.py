"""Test set-up. Airflow reads its configuration at import time, so the environment is set here,
before anything imports airflow: a throw-away AIRFLOW_HOME with SQLite, this project's dags."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLOUDTRAIL = ROOT.parent / "shared" / "data" / "cloudtrail"
_HOME = Path(tempfile.mkdtemp(prefix="trailguard-airflow-home-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
for name in list(os.environ):
    if name.startswith("TRAILGUARD_"):
        del os.environ[name]

import pytest  # ruff: ignore[module-import-not-at-top-of-file]

PG_ADMIN_URL = os.environ.get("TRAILGUARD_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def shared_cloudtrail() -> Path:
    """The 51k public CloudTrail records beside the project (read-only)."""
    assert SHARED_CLOUDTRAIL.is_dir(), f"{SHARED_CLOUDTRAIL} is missing: tests need ../shared beside the project"
    return SHARED_CLOUDTRAIL


@pytest.fixture
def tg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh lake and SQLite state store for one test, through the real settings variables."""
    monkeypatch.setenv("TRAILGUARD_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/state.db")
    monkeypatch.setenv("TRAILGUARD_WORKERS", "1")
    return tmp_path


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata tables (dag.test needs them)."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture
def pg_url() -> str:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import sqlalchemy as sa

    name = f"trailguard_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """A real S3 endpoint over HTTP: moto_server on 127.0.0.1, for the whole session."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert exe, "moto_server not installed (it comes with moto[server] in requirements.txt)"
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(moto_endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
