"""The portal's side of bench/portal.py: a browser's requests, made with httpx.

* `sign_in` / `sign_out`: the pages' own flow, as a browser sends it (the `Origin`
  header and the `csrf` form field of the page it came from): GET /signin, POST the
  password, GET /signin/code, POST the code (a 303 to / is success), GET /, POST
  /signout. Any other answer is a `SignInError` (the benchmark is wrong, or the
  portal is): it stops the run.
* `Codes` hands out TOTP codes the portal will accept: a code is accepted once
  per account, for a step later than the last one used, within one step of the
  server's clock (auth/totp.py), so one account signs in at most about once per
  30 s step; continuous sign-ins rotate over a pool of accounts.
* `signer_process`: the load of arm B, in its own process (its TLS and httpx work
  is not on the measuring client's event loop): one user after another signs in
  and out, back to back, each sign-in from a new connection (a new browser
  session) and the next source address of a list, so that the portal's own
  per-source limit on sign-in attempts (portal/ratelimit.py) is not what is
  measured.
* `page_load`: signed-in users fetching pages back to back, each on its own
  kept-alive connection (`PageClient`, a minimal HTTP/1.1 client), latencies per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import ssl
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import httpx
import pyotp

__all__ = [
    "Codes",
    "HttpError",
    "PageClient",
    "PageRun",
    "Portal",
    "SignInError",
    "SignerResult",
    "SignerSpec",
    "TotpUser",
    "page_load",
    "sign_in",
    "sign_out",
    "signed_in_client",
    "signer_process",
]

TIMEOUT = 30.0
STEP = 30  # seconds per TOTP step (auth/totp.py: the otpauth defaults)
# A code is chosen this long before the portal may check it (the password step,
# a busy event loop); its step must still be accepted then.
CODE_MARGIN = 5.0
# The load stops after this many failed sign-ins (one is already a wrong benchmark).
MAX_ERRORS = 5

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class SignInError(Exception):
    """The portal did not answer as a browser signing in expects."""


@dataclass(frozen=True)
class TotpUser:
    name: str
    password: str
    secret: str


@dataclass(frozen=True)
class Portal:
    port: int
    ca_file: str

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def client(self, ctx: ssl.SSLContext, source: str) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=ctx, local_address=source)
        return httpx.Client(
            base_url=self.url,
            transport=transport,
            timeout=TIMEOUT,
            headers={"Origin": self.url},
        )


# --------------------------------------------------------------------------- codes


class Codes:
    """TOTP codes for a pool of accounts, each for a step the portal has not seen."""

    def __init__(self, users: list[TotpUser], last_steps: dict[str, int]) -> None:
        self.users = users
        self.last_steps = dict(last_steps)
        self._otp = {u.name: pyotp.TOTP(u.secret) for u in users}
        self._next = 0

    def pick(self, now: float) -> tuple[TotpUser, int] | None:
        """The next account (round robin) with a usable step, and that step; the
        step is taken (spent) at once. None: every account used its steps."""
        lo = int((now + CODE_MARGIN) // STEP) - 1
        hi = int(now // STEP) + 1
        for k in range(len(self.users)):
            user = self.users[(self._next + k) % len(self.users)]
            step = max(self.last_steps.get(user.name, -1) + 1, lo)
            if step <= hi:
                self._next = (self._next + k + 1) % len(self.users)
                self.last_steps[user.name] = step
                return user, step
        return None

    def code(self, user: TotpUser, step: int) -> str:
        return self._otp[user.name].at(step * STEP)


# --------------------------------------------------------------------------- the flow


def _csrf(page: httpx.Response) -> str:
    match = _CSRF.search(page.text)
    if match is None:
        raise SignInError(f"{page.request.url.path}: no csrf field in the page")
    return match.group(1)


def _expect(r: httpx.Response, status: int, location: str | None = None) -> httpx.Response:
    where = r.headers.get("location", "")
    if r.status_code != status or (location is not None and not where.endswith(location)):
        raise SignInError(
            f"{r.request.method} {r.request.url.path}: {r.status_code}"
            + (f" -> {where}" if where else "")
            + f", expected {status}"
            + (f" -> {location}" if location else "")
            + (f" (Retry-After {r.headers['retry-after']})" if "retry-after" in r.headers else "")
        )
    return r


def sign_in(web: httpx.Client, user: TotpUser, code: str) -> None:
    form = _expect(web.get("/signin"), 200)
    data = {"csrf": _csrf(form), "username": user.name, "password": user.password}
    _expect(web.post("/signin", data=data), 303, "/signin/code")
    page = _expect(web.get("/signin/code"), 200)
    _expect(web.post("/signin/code", data={"csrf": _csrf(page), "code": code}), 303, "/")


def sign_out(web: httpx.Client, user: TotpUser) -> None:
    home = _expect(web.get("/"), 200)
    if user.name not in home.text:
        raise SignInError(f"GET /: the page does not name {user.name}")
    _expect(web.post("/signout", data={"csrf": _csrf(home)}), 303, "/signin")


def signed_in_client(
    portal: Portal, ctx: ssl.SSLContext, codes: Codes, source: str
) -> tuple[TotpUser, httpx.Cookies]:
    """Sign the next account of `codes` in from `source`; its cookies (for a page client)."""
    pick = codes.pick(time.time())
    if pick is None:
        raise SignInError("no account has an unused TOTP step left; give more accounts")
    user, step = pick
    with portal.client(ctx, source) as web:
        sign_in(web, user, codes.code(user, step))
        return user, web.cookies


# --------------------------------------------------------------------------- arm B's load


@dataclass(frozen=True)
class SignerSpec:
    portal: Portal
    users: list[TotpUser]
    last_steps: dict[str, int]
    sources: list[str]
    interval: float = 0.0  # seconds from one sign-in's start to the next's; 0: back to back


@dataclass
class SignerResult:
    finished: list[tuple[float, float]] = field(default_factory=list)  # (monotonic end, s)
    errors: list[str] = field(default_factory=list)
    waited: float = 0.0  # seconds spent waiting for a TOTP step (every account used its own)
    last_steps: dict[str, int] = field(default_factory=dict)


def signer_process(spec: SignerSpec, stop: Event, out: Connection) -> None:
    """Sign in (both steps), fetch /, sign out; the next account (after what is
    left of `spec.interval`); until `stop`. Sends ("ready", None) after the first
    complete cycle, ("done", SignerResult) at the end ("failed" if none completed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    ctx = spec.portal.ssl_context()
    codes = Codes(spec.users, spec.last_steps)
    sources = itertools.cycle(spec.sources)
    result = SignerResult()
    ready = False
    while not stop.is_set() and len(result.errors) < MAX_ERRORS:
        now = time.time()
        pick = codes.pick(now)
        if pick is None:
            pause = STEP - now % STEP + 0.05
            t0 = time.monotonic()
            stop.wait(pause)
            result.waited += time.monotonic() - t0
            continue
        user, step = pick
        t0 = time.monotonic()
        try:
            with spec.portal.client(ctx, next(sources)) as web:
                sign_in(web, user, codes.code(user, step))
                sign_out(web, user)
        except (SignInError, httpx.HTTPError) as exc:
            result.errors.append(f"{user.name}: {type(exc).__name__}: {exc}")
            continue
        t1 = time.monotonic()
        result.finished.append((t1, t1 - t0))
        if not ready:
            out.send(("ready", None))
            ready = True
        if spec.interval > t1 - t0:
            stop.wait(spec.interval - (t1 - t0))
    result.last_steps = codes.last_steps
    if not ready:
        out.send(("failed", result))
    else:
        out.send(("done", result))
    out.close()


# --------------------------------------------------------------------------- page latency


@dataclass
class PageRun:
    latencies: dict[str, list[float]]  # path -> seconds
    errors: list[str]
    wall: float
    gateway_cpu: float = 0.0
    client_cpu: float = 0.0
    foreign_cores: float = 0.0

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())


class HttpError(Exception):
    """A page request did not get a whole HTTP/1.1 response."""


class PageClient:
    """One browser's kept-alive HTTPS connection, fetching pages with a session cookie.

    A minimal HTTP/1.1 client (GET, a `Content-Length` or chunked body, nothing else):
    httpx spends about twice the CPU per request that the portal does, so with it
    20 users in this process would measure the client, not the portal."""

    MAX_BODY = 1 << 20  # a portal page is a few KiB

    def __init__(self, portal: Portal, cookies: httpx.Cookies, source: str) -> None:
        self.portal = portal
        self.source = source
        cookie = "; ".join(f"{c.name}={c.value}" for c in cookies.jar)
        self._head = f"Host: localhost:{portal.port}\r\nCookie: {cookie}\r\n\r\n".encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(
                "127.0.0.1",
                self.portal.port,
                ssl=ctx,
                server_hostname="localhost",
                local_addr=(self.source, 0),
            )
        reader, writer = self._streams
        writer.write(f"GET {path} HTTP/1.1\r\n".encode() + self._head)
        async with asyncio.timeout(TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                raise HttpError(f"GET {path}: no response head ({exc})") from exc
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            )
            if "content-length" in fields:
                length = int(fields["content-length"])
                if length > self.MAX_BODY:
                    raise HttpError(f"GET {path}: a body of {length} bytes")
                body = await reader.readexactly(length)
            elif fields.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked(reader, path)
            else:
                raise HttpError(f"GET {path}: neither Content-Length nor chunked")
        return status, body

    async def _chunked(self, reader: asyncio.StreamReader, path: str) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            if sum(map(len, parts)) + size > self.MAX_BODY:
                raise HttpError(f"GET {path}: a chunked body over {self.MAX_BODY} bytes")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def page_load(
    portal: Portal,
    ctx: ssl.SSLContext,
    signed_in: list[tuple[TotpUser, httpx.Cookies, str]],
    pages: list[str],
    seconds: float,
    warmup: float,
) -> PageRun:
    """Each signed-in user fetches `pages` in turn, back to back, on one kept-alive
    connection, for `warmup` (not counted) and then `seconds`. A page must answer
    200 and name its user (a 303 to /signin would be a lost session)."""
    latencies: dict[str, list[float]] = {p: [] for p in pages}
    errors: list[str] = []
    clock = time.perf_counter

    async def user_loop(web: PageClient, user: TotpUser, offset: int, start: float) -> None:
        end = start + seconds
        name = user.name.encode()
        for i in itertools.count(offset):
            if clock() >= end or len(errors) >= MAX_ERRORS:
                return
            path = pages[i % len(pages)]
            t0 = clock()
            try:
                status, body = await web.get(path, ctx)
            except (HttpError, OSError, ssl.SSLError, TimeoutError) as exc:
                errors.append(f"GET {path}: {type(exc).__name__}: {exc}")
                return
            t1 = clock()
            if status != 200 or name not in body:
                errors.append(f"GET {path} as {user.name}: {status}")
                continue
            if t0 >= start:
                latencies[path].append(t1 - t0)

    clients = [PageClient(portal, cookies, source) for _, cookies, source in signed_in]
    try:
        start = clock() + warmup
        async with asyncio.TaskGroup() as tg:
            for k, (web, (user, _, _)) in enumerate(zip(clients, signed_in, strict=True)):
                tg.create_task(user_loop(web, user, k, start))
        wall = clock() - start
    finally:
        for web in clients:
            await web.close()
    return PageRun(latencies, errors, wall)
