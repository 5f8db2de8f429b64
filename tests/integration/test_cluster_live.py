"""Two gateway nodes on one PostgreSQL and one Redis, with real Dovecot behind
both: what one node does reaches the other at once through Redis.

* A revocation through node A's CLI or its portal ends the IDLE session node
  B relays well within a second, although node B reads the revocation feed only once an
  hour (a test-side `sitecustomize` sets `gateway.revocation.INTERVAL` in its
  process): only the pub/sub wake-up can have done it. A wake-up forged by
  anyone who may publish on the channel ends nothing.
* An auth event on node B appears on the live stream of the portal served
  with node A (its own audit log file never holds it), the browser's
  `Last-Event-ID` resumes after what it saw, and with Redis killed the stream
  says the events are unavailable and goes on once Redis is back.
* With Redis killed, node B still lets a valid login in (defense.fail_open for
  its counters) and counts the live events it could not send.

Source network: 127.0.227.0/24."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.integration import portal_web
from tests.integration.conftest import AUTH_FAILED, RawClient, wait_for
from tests.integration.portal_web import csrf, new_user, signed_in
from tests.metrics_scrape import scrape
from tests.postgres import PostgresServer, pg_url, postgres
from tests.redis_server import RedisServer, redis_server

__all__ = ["pg_url", "postgres", "redis_server"]

pytestmark = pytest.mark.dovecot

ADMIN = f"admin{secrets.token_hex(3)}"
# Node B's revocation feed is read once an hour: a session it ends at once was
# ended by a wake-up.
LONG_POLL = """import imapguard.gateway.revocation as revocation

revocation.INTERVAL = 3600.0
"""


class LongPollGateway(GatewayProcess):
    """A gateway whose processes load `base/longpoll/sitecustomize.py`."""

    def _env(self) -> dict[str, str]:
        env = super()._env()
        hooks = self.base / "longpoll"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(LONG_POLL)
        env["PYTHONPATH"] = f"{hooks}:{env['PYTHONPATH']}"
        return env


@dataclass
class Cluster:
    a: GatewayProcess
    b: GatewayProcess
    portal_port: int
    redis: RedisServer
    b_metrics: int  # node B's [metrics] port


@contextlib.contextmanager
def started(gw: GatewayProcess) -> Iterator[GatewayProcess]:
    gw.start()
    try:
        yield gw
        assert gw.proc is not None
        assert gw.proc.poll() is None, gw.log_text()
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()


@pytest.fixture
def cluster(
    tmp_path: Path,
    dovecot: DovecotServer,
    postgres: PostgresServer,
    pg_url: str,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    state = (
        f'url = "{pg_url}"\npassword_file = "{postgres.password_file}"\n'
        f'counters_url = "{redis_server.url}"\n'
        f'counters_password_file = "{redis_server.password_file}"'
    )
    port = free_port()
    a = GatewayProcess.create(
        tmp_path / "a",
        dovecot,
        state=state,
        methods=("app-password", "password+totp"),
        extra_toml=f"""
[limits]
drain_timeout = 1.0

[portal]
listen = "127.0.0.1:{port}"
url = "https://localhost:{port}"

[groups]
admins = ["{ADMIN}"]
""",
    )
    b_metrics = free_port()
    b = LongPollGateway.create(
        tmp_path / "b",
        dovecot,
        state=state,
        extra_toml="[limits]\ndrain_timeout = 1.0\n\n[defense]\nfail_open = true\n\n"
        f'[metrics]\naddress = "127.0.0.1:{b_metrics}"\n',
    )
    key = re.search(r'^key_file = "(.*)"$', a.config_path.read_text(), flags=re.M)
    assert key is not None
    b.config_path.write_text(
        re.sub(
            r'^key_file = ".*"$',
            f'key_file = "{key.group(1)}"',
            b.config_path.read_text(),
            flags=re.M,
        )
    )
    with started(a), started(b):
        wait_for(lambda: a.accepts(port), 15.0, "node A's portal")
        yield Cluster(a, b, port, redis_server, b_metrics)


def idle_on(gw: GatewayProcess, src: str, password: str) -> RawClient:
    client = RawClient(gw.implicit_port, src, tls=gw.client_ssl(), timeout=15)
    client.line()
    assert client.command(b"a1", f'LOGIN alice "{password}"'.encode())[-1].startswith(b"a1 OK ")
    assert client.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK ")
    client.send(b"a3 IDLE\r\n")
    assert client.line().startswith(b"+ ")
    return client


def test_a_revocation_through_node_a_ends_node_b_idle_within_a_second_by_wakeup(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    password = a.create_app_password("alice", "phone")
    with contextlib.closing(idle_on(b, "127.0.227.1", password)) as idle:
        listed = json.loads(a.cli("app-password", "list", "alice", "--json").stdout)
        a.cli("app-password", "revoke", "alice", listed[0]["id"])
        revoked_at = time.monotonic()  # the CLI announced it before it exited
        while not (line := idle.line()).startswith(b"* BYE"):
            pass
        assert time.monotonic() - revoked_at < 1.0
        assert b"revoked" in line
    with RawClient(b.implicit_port, "127.0.227.2", tls=b.client_ssl()) as again:
        again.line()
        assert again.command(b"b1", f'LOGIN alice "{password}"'.encode())[-1] == (
            b"b1 " + AUTH_FAILED
        )
    ended = [e for e in b.events("revoked") if e["user"] == "alice"]
    assert len(ended) == 1


def test_a_forged_wakeup_ends_no_session(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    password = a.create_app_password("alice", "laptop")
    forger = redis.Redis(host="127.0.0.1", port=cluster.redis.port, password=cluster.redis.password)
    with contextlib.closing(idle_on(b, "127.0.227.3", password)) as idle, forger:
        # Anyone with access to Redis: the channel's name is no secret.
        for _ in range(100):
            forger.publish("imapguard:wake:revocations", "revoke alice")
        assert idle.quiet(1.5) == b""  # no BYE: the feed names nothing
        idle.send(b"DONE\r\n")
        assert idle.until_tagged(b"a3")[-1].startswith(b"a3 OK")
        assert idle.command(b"a4", b"NOOP")[-1].startswith(b"a4 OK")
    assert b.events("revoked") == []


def sign_out(web: httpx.Client) -> None:
    """Which ends the admin's streams (within `admin_live.RECHECK`): the tests
    end theirs so, never by stopping the portal under an open stream."""
    home = web.get("/")
    assert web.post("/signout", data={"csrf": csrf(home)}).status_code == 303


def signed_in_admin(cluster: Cluster, dovecot: DovecotServer) -> httpx.Client:
    return portal_web.signed_in_admin(cluster.a, cluster.portal_port, dovecot, ADMIN)


class Stream:
    """An admin's SSE stream read on a thread: (event, data, id) as they come."""

    def __init__(self, web: httpx.Client, url: str, last_id: str | None = None) -> None:
        self.messages: list[tuple[str, Any, str | None]] = []
        self._lock = threading.Lock()
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        self._thread = threading.Thread(target=self._read, args=(web, url, headers), daemon=True)
        self._thread.start()

    def _read(self, web: httpx.Client, url: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(httpx.HTTPError), web.stream("GET", url, headers=headers) as r:
            kind, event_id = "", None
            for line in r.iter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    with self._lock:
                        self.messages.append((kind, json.loads(line[6:]), event_id))
                    kind, event_id = "", None

    def users(self) -> list[str]:
        with self._lock:
            return [e["user"] for k, d, _ in self.messages if k == "auth" for e in d]

    def kinds(self) -> list[str]:
        with self._lock:
            return [k for k, _, _ in self.messages]

    def last_id(self) -> str | None:
        with self._lock:
            ids = [i for k, _, i in self.messages if k == "auth" and i]
        return ids[-1] if ids else None

    def ended(self) -> bool:
        """The stream ended (its `end` event read: the admin signed out)."""
        self._thread.join(10)
        return not self._thread.is_alive() and "end" in self.kinds()


def wrong_login(gw: GatewayProcess, src: str, user: str) -> bytes:
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        answer: bytes = c.command(b"w", f'LOGIN "{user}" "not-the-password"'.encode())[-1]
    return answer


def test_an_auth_event_on_node_b_is_live_on_node_a_portal_and_resumes_by_last_event_id(
    cluster: Cluster, dovecot: DovecotServer
) -> None:
    a, b = cluster.a, cluster.b
    target, later = f"target{secrets.token_hex(3)}", f"later{secrets.token_hex(3)}"
    with contextlib.closing(signed_in_admin(cluster, dovecot)) as web:
        page = web.get("/admin/events")
        assert page.status_code == 200
        found = re.search(r'data-stream="([^"]+)"', page.text)
        assert found, page.text
        stream = Stream(web, found.group(1).replace("&amp;", "&"))
        time.sleep(1.0)  # the stream is open and knows the stream's end
        assert wrong_login(b, "127.0.227.4", target) == b"w " + AUTH_FAILED
        wait_for(lambda: target in stream.users(), 10.0, "node B's event on node A")
        seen = stream.last_id()
        assert seen is not None
        assert re.fullmatch(r"\d+-\d+", seen)
        # A browser that reconnects names the last id it saw: it gets what came
        # after it, and not what it saw.
        assert wrong_login(b, "127.0.227.5", later) == b"w " + AUTH_FAILED
        wait_for(lambda: later in stream.users(), 10.0, "the second event")
        resumed = Stream(web, "/admin/events/stream", last_id=seen)
        wait_for(lambda: later in resumed.users(), 10.0, "the event after the last id")
        assert target not in resumed.users()
        sign_out(web)
        assert stream.ended()
        assert resumed.ended()
    # Node A never wrote them: they came from node B through Redis.
    assert target not in json.dumps(a.events("auth"))
    assert target in json.dumps(b.events("auth"))
    assert "not-the-password" not in json.dumps(stream.messages)


def test_redis_killed_the_stream_says_unavailable_logins_go_on_and_it_recovers(
    cluster: Cluster, dovecot: DovecotServer
) -> None:
    a, b = cluster.a, cluster.b
    password = a.create_app_password("alice", "tablet")
    back = f"back{secrets.token_hex(3)}"
    with contextlib.closing(signed_in_admin(cluster, dovecot)) as web:
        stream = Stream(web, "/admin/events/stream")
        time.sleep(1.0)
        cluster.redis.stop()
        wait_for(lambda: "unavailable" in stream.kinds(), 10.0, "the 'unavailable' event")
        # Node B's XADD fails; its login does not (fail_open for its counters).
        with RawClient(b.implicit_port, "127.0.227.6", tls=b.client_ssl()) as c:
            c.line()
            answer = c.command(b"l", f'LOGIN alice "{password}"'.encode())[-1]
        assert answer.startswith(b"l OK "), answer
        wait_for(lambda: "live events not sent to redis" in b.log_text(), 10.0, "the drop")
        # ... and counted where the operators look.
        dropped = scrape(cluster.b_metrics).value("imapguard_live_events_dropped_total")
        assert dropped >= 1
        cluster.redis.start()
        wait_for(lambda: "available" in stream.kinds(), 15.0, "the 'available' event")
        assert wrong_login(b, "127.0.227.7", back) == b"w " + AUTH_FAILED
        wait_for(lambda: back in stream.users(), 15.0, "events after Redis returned")
        assert stream.kinds().count("unavailable") == 1
        sign_out(web)
        assert stream.ended()
    assert "live events sent to redis again" in b.log_text()


def test_an_app_password_revoked_in_node_a_portal_ends_node_b_idle_within_a_second(
    cluster: Cluster, dovecot: DovecotServer
) -> None:
    a, b = cluster.a, cluster.b
    user = new_user(a, dovecot, prefix="owner")
    password = a.create_app_password(user.name, "phone")
    with (
        signed_in(a, cluster.portal_port, user) as web,
        contextlib.closing(RawClient(b.implicit_port, "127.0.227.8", tls=b.client_ssl())) as idle,
    ):
        idle.line()
        login = f'LOGIN {user.name} "{password}"'.encode()
        assert idle.command(b"a1", login)[-1].startswith(b"a1 OK ")
        assert idle.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK ")
        idle.send(b"a3 IDLE\r\n")
        assert idle.line().startswith(b"+ ")
        listed = web.get("/app-passwords")
        record = re.search(r'name="id" value="([^"]+)"', listed.text)
        assert record is not None
        done = web.post("/app-passwords/revoke", data={"csrf": csrf(listed), "id": record.group(1)})
        assert done.status_code == 303, done.text
        revoked_at = time.monotonic()  # the portal announced it before it answered
        while not (line := idle.line()).startswith(b"* BYE"):
            pass
        assert time.monotonic() - revoked_at < 1.0
        assert b"revoked" in line
    # The audit event follows the BYE it reports.
    wait_for(lambda: b.events("revoked"), 5.0, "node B's revoked event")
    assert [e["user"] for e in b.events("revoked")] == [user.name]
