"""Services the slow tests start for real, on 127.0.0.1 only, and stop by PID: a PostgreSQL cluster in a temporary
directory, and an MLflow tracking server on top of it (as the README's shared-server setup has it)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import VENV_BIN, free_port, stop_group, wait_for_http

POSTGRES_USER = "postgres"  # the cluster's superuser, and the OS user that runs the server when tests run as root
STOP_TIMEOUT_S = 30
PROGRAMS = ("initdb", "postgres", "pg_isready", "psql")


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's programs: $PG_BIN, `pg_config --bindir`, where `initdb` on PATH leads (often a
    symlink), or Debian's newest; the first that holds all of them."""
    candidates = [os.environ.get("PG_BIN")]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    debian = sorted(Path("/usr/lib/postgresql").glob("[0-9]*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for candidate in [*filter(None, candidates), *map(str, debian)]:
        if all((Path(candidate) / program).is_file() for program in PROGRAMS):
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Postgres:
    """A running cluster: its superuser connects with a password over TCP on `port`."""

    bin: Path
    port: int
    password: str

    def psql(self, *statements: str, database: str = "postgres") -> str:
        """Run SQL statements as the superuser (the way an admin would, from psql); their output, unaligned."""
        command = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", POSTGRES_USER]
        command += ["-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t"]
        for statement in statements:
            command += ["-c", statement]
        env = os.environ | {"PGPASSWORD": self.password}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"psql {statements}: {result.stderr}"
        return result.stdout

    def create_database(self, name: str, user: str, password: str) -> str:
        """A database owned by a new login role (the README's commands); its SQLAlchemy URI. The driver is named:
        SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, and the project pins psycopg2-binary."""
        self.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'", f"CREATE DATABASE {name} OWNER {user}")
        return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """initdb into a fresh temporary directory, start `postgres` on a free loopback port, and stop it by its PID
    (fast shutdown, then SIGKILL to its process group) and remove the directory however the caller ends."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (set PG_BIN to the directory of its initdb and postgres)")
    # PostgreSQL refuses to run as root: then the cluster belongs to the postgres user, in a directory it can reach
    # (pytest's own temporary directories are private to root)
    as_user = {"user": POSTGRES_USER, "group": POSTGRES_USER} if os.geteuid() == 0 else {}
    root = Path(tempfile.mkdtemp(prefix="fashion-mlops-pg-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        if as_user:
            shutil.chown(root, POSTGRES_USER, POSTGRES_USER)
        password = secrets.token_hex(16)
        password_file = root / "password"
        password_file.write_text(password)
        if as_user:
            shutil.chown(password_file, POSTGRES_USER, POSTGRES_USER)
        data = root / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", POSTGRES_USER, "-A", "scram-sha-256"]
        initdb += ["--pwfile", str(password_file), "-E", "UTF8", "--no-sync"]
        result = subprocess.run(initdb, cwd=root, capture_output=True, text=True, timeout=120, **as_user)
        assert result.returncode == 0, f"initdb failed: {result.stderr}"
        password_file.unlink()
        port, log_path = free_port(), root / "postgres.log"
        # TCP on loopback only; the Unix socket goes into the cluster's own directory, never the system's
        server = [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root)]
        server += ["-c", "fsync=off", "-c", "full_page_writes=off"]  # a throwaway cluster: speed over durability
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                server, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user
            )
        wait_for_postgres(bin_dir, port, process, log_path)
        yield Postgres(bin_dir, port, password)
    finally:
        if process is not None:
            stop_postgres(process)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_postgres(
    bin_dir: Path, port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    ready = [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]
    while subprocess.run(ready, timeout=10).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"PostgreSQL did not start:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)


def stop_postgres(process: subprocess.Popen[bytes]) -> None:
    """SIGINT is PostgreSQL's fast shutdown: clients are disconnected rather than waited for (SIGTERM waits)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_group(process, signal.SIGKILL)


@dataclass(frozen=True)
class MlflowServer:
    url: str
    backend_store_uri: str
    artifacts: Path


@contextlib.contextmanager
def running_mlflow_server(backend_store_uri: str, artifacts: Path, log_path: Path) -> Iterator[MlflowServer]:
    """`mlflow server` on a free loopback port, storing runs and the registry at `backend_store_uri` and proxying
    artifacts into the folder `artifacts`; stopped with its worker (one process group) however the caller ends."""
    port = free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri]
    command += ["--artifacts-destination", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env |= {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no internet: telemetry would stall each start
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=artifacts.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", process, log_path, timeout=180)  # the first start creates the schema
        yield MlflowServer(url, backend_store_uri, artifacts)
    finally:
        stop_group(process)
