"""A private, throw-away PostgreSQL 15 (Debian ``postgresql``) for tests.

Usage::

    def test_something(pg_url: str) -> None:   # a fresh database, at the current schema
        store = open_store(pg_url)

``postgres`` (session-scoped) is the server; ``pg_url`` a new database per test,
copied from a template that already holds the schema (``CREATE DATABASE ...
TEMPLATE``, a file copy: fast), dropped after the test; ``pg_empty_url`` a new
empty one (for migration tests).

What one instance looks like:

* ``initdb`` and ``postgres`` run as the unprivileged ``postgres`` user when the
  tests run as root (CI does; PostgreSQL refuses root), in a temporary directory
  that user owns, listening on 127.0.0.1 and a free port (its Unix socket in that
  directory); stopped and removed at the end of the session.
* Password authentication (SCRAM) for every TCP connection: a superuser
  ``postgres`` and the application's role ``imapguard``, passwords random, the
  latter's also in ``password_file``.
* TLS: a ``trustme`` CA (``ca``) signs the server's certificate for
  ``localhost`` and ``127.0.0.1``, so ``sslmode=verify-full`` works; ``other_ca``
  signs nothing the server has (a wrong CA).
* Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``):
  a test cluster need not survive a crash, and it makes the suite fast.
"""

from __future__ import annotations

import itertools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import trustme
from psycopg import sql

from tests.dovecot import free_port

__all__ = ["PostgresServer", "pg_empty_url", "pg_url", "postgres"]

BIN = Path("/usr/lib/postgresql/15/bin")
TEMPLATE = "imapguard_template"
_names = itertools.count(1)


def _as_postgres(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, timeout=60, **kwargs)  # type: ignore[call-overload, no-any-return]


@dataclass
class PostgresServer:
    base: Path
    port: int
    ca: Path
    other_ca: Path
    admin_password: str
    password: str
    password_file: Path

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, database: str, *, sslmode: str = "verify-full", ca: Path | None = None) -> str:
        """The application's URL for `database`, without its password."""
        root = ca or self.ca
        return (
            f"postgresql://imapguard@127.0.0.1:{self.port}/{database}"
            f"?sslmode={sslmode}&sslrootcert={root}"
        )

    def url_with_password(self, database: str) -> str:
        """The same, its password inline (tests only: other processes open it)."""
        return self.url(database).replace("imapguard@", f"imapguard:{self.password}@")

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.admin_password,
            dbname="postgres",
            sslmode="require",
            autocommit=True,
        )

    def create_database(self, *, template: str = TEMPLATE) -> str:
        name = f"t{os.getpid()}_{next(_names)}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER imapguard TEMPLATE {template}")
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    @classmethod
    def start(cls) -> PostgresServer:
        base = Path(tempfile.mkdtemp(prefix="imapguard-pg-"))
        base.chmod(0o755)
        ca, other = trustme.CA(), trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        server = cls(
            base=base,
            port=free_port(),
            ca=base / "ca.pem",
            other_ca=base / "other-ca.pem",
            admin_password=secrets.token_urlsafe(16),
            password=secrets.token_urlsafe(16),
            password_file=base / "password",
        )
        ca.cert_pem.write_to_path(str(server.ca))
        other.cert_pem.write_to_path(str(server.other_ca))
        server.password_file.write_text(server.password)
        server.password_file.chmod(0o600)
        cert.cert_chain_pems[0].write_to_path(str(base / "server.crt"))
        cert.private_key_pem.write_to_path(str(base / "server.key"))
        (base / "admin-password").write_text(server.admin_password)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (base, base / "server.crt", base / "server.key", base / "admin-password"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        (base / "server.key").chmod(0o600)
        _as_postgres(
            [
                str(BIN / "initdb"),
                "-D",
                str(server.data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={base / 'admin-password'}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
        (server.data / "postgresql.auto.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
            f"unix_socket_directories = '{base}'\n"
            f"ssl = on\nssl_cert_file = '{base / 'server.crt'}'\n"
            f"ssl_key_file = '{base / 'server.key'}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "max_connections = 300\nshared_buffers = 32MB\n"
        )
        (server.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for name in ("postgresql.auto.conf", "pg_hba.conf"):
                os.chown(server.data / name, owner.pw_uid, owner.pw_gid)
        server.resume()
        try:
            server._setup()
        except BaseException:
            server.stop()
            raise
        return server

    def _setup(self) -> None:
        server = self
        with server.admin() as db:
            db.execute(
                sql.SQL("CREATE ROLE imapguard LOGIN PASSWORD {}").format(
                    sql.Literal(server.password)
                )
            )
        # The template: a database at the current schema, made by the store itself.
        from imapguard.state.postgres import open_store

        name = server.create_database(template="template0")
        open_store(server.url(name), password=server.password).close()
        with server.admin() as db:
            db.execute(f"ALTER DATABASE {name} RENAME TO {TEMPLATE}")

    def pause(self) -> None:
        """Stop the server at once (its clients see their connections drop)."""
        _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])

    def resume(self) -> None:
        """Start the server (again), on the same port and data."""
        _as_postgres(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w", "start"]
        )

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A new database at the current schema (its URL has no password:
    `postgres.password` is it)."""
    name = postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


@pytest.fixture
def pg_empty_url(postgres: PostgresServer) -> Iterator[str]:
    """A new empty database (no tables)."""
    name = postgres.create_database(template="template0")
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)
