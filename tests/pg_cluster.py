"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, a free loopback port.

Built on pytest-postgresql's ``PostgreSQLExecutor`` (pg_ctl init/start/stop, waiting for
readiness). The machine may run its own PostgreSQL on 5432: this never touches it. PostgreSQL
refuses to run as root, and the tests run as root on CI, so then pg_ctl is called through a tiny
wrapper that switches to the ``postgres`` system user (Debian's postgresql package creates it)
and the data directory is created outside pytest's root-only temp tree and given to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from mirakuru.exceptions import ProcessExitedWithError, TimeoutExpired
from pytest_postgresql.executors import PostgreSQLExecutor

SUPERUSER = "kentongan_test"


def find_pg_ctl() -> str | None:
    """pg_ctl of the newest Debian PostgreSQL (or one on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    return shutil.which("pg_ctl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One cluster for the test session; ``new_database()`` gives each test a fresh database."""

    def __init__(self, *, fsync: bool = False) -> None:
        """``fsync=False`` (tests): durability is not what they measure; benchmarks pass True."""
        pg_ctl = find_pg_ctl()
        if pg_ctl is None:
            raise RuntimeError("PostgreSQL server binaries not found (scripts/bootstrap installs Debian's postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="kentongan-pg-"))
        executable = pg_ctl
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            wrapper = self.root / "pg_ctl_as_postgres"
            wrapper.write_text(f'#!/bin/sh\ncd /\nexec runuser -u postgres -- "{pg_ctl}" "$@"\n')
            wrapper.chmod(0o755)
            executable = str(wrapper)
            for sub in ("sock",):
                (self.root / sub).mkdir()
                os.chown(self.root / sub, owner.pw_uid, owner.pw_gid)
        else:
            (self.root / "sock").mkdir()
        self._executable = executable
        self._fsync = fsync
        self.port = free_port()
        self.executor = self._executor(self.port)

    def _executor(self, port: int) -> PostgreSQLExecutor:
        executor = PostgreSQLExecutor(
            executable=self._executable, host="127.0.0.1", port=port, datadir=str(self.root / "data"),
            unixsocketdir=str(self.root / "sock"), logfile=str(self.root / "postgresql.log"),
            startparams="-w", dbname="postgres", user=SUPERUSER, timeout=120,
            postgres_options="-c listen_addresses=127.0.0.1 -c max_connections=200"
                             # pytest-postgresql always passes -F (fsync off) first: a later -c wins.
                             + (" -c fsync=on" if self._fsync else " -c fsync=off"))
        if os.geteuid() == 0:
            # pg_ctl -l writes the log as the postgres user.
            log = self.root / "postgresql.log"
            log.touch()
            os.chown(log, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
        return executor

    def start(self, attempts: int = 5) -> PgCluster:
        """Start the cluster. On a busy machine the free port picked may be taken by someone else
        before the server binds it: then try again on another port (the log's tail is kept in
        the error if every attempt fails)."""
        for attempt in range(1, attempts + 1):
            try:
                self.executor.start()
                break
            except (ProcessExitedWithError, TimeoutExpired) as exc:
                log = self.root / "postgresql.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                with contextlib.suppress(Exception):  # it did not start: nothing to stop
                    self.executor.stop()
                if attempt == attempts:
                    raise RuntimeError(f"PostgreSQL did not start after {attempts} attempts; log:\n{tail}") from exc
                self.port = free_port()
                self.executor = self._executor(self.port)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the server accepts queries (pg_ctl -w may return while it still recovers)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.executor.stop()

    def restart(self) -> None:
        """Stop (fast shutdown: every connection is cut) and start again on the same port."""
        self.executor.stop()
        self.start(attempts=1)  # the clients reconnect to the same port

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop for good: an immediate shutdown (no shutdown checkpoint: the cluster and its
        data are thrown away next; a fast one writes every dirty page of every test database
        first, 10-15 s at the end of a session on a busy disk)."""
        try:
            if self.executor.running():
                subprocess.run([self._executable, "stop", "-D", str(self.root / "data"), "-m", "immediate"],
                               check=False, capture_output=True, timeout=120)
                if self.executor.running():
                    self.executor.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
