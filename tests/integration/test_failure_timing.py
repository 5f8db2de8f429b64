"""Attack-named: there is no timing oracle. A guesser who times the answer to
LOGIN must not learn which of the six failures it got (every failure is
uniform, in text and in time): unknown user, wrong password, correct password without the required
second factor, blocked source, locked account, policy deny.

Through a real `imapguard serve` in front of the real Dovecot fixture, with the
gateway's default failure timing (`auth.failure_delay` = 1.0 s, `failure_jitter` =
0.25 s; the lines tests/gateway.py writes are removed). The floor adapts to the
90th percentile of the upstream's recent refusal times (Dovecot's
`auth_failure_delay` of 2 s: its refusals take about 1.5 to 2.5 s here), so every
failure is answered about 2 to 2.7 s after LOGIN. (The whole run then takes about
45 s: 1,200 tries of about 2.3 s, 64 at a time.)

How the measurement is kept honest:

* 200 tries of each kind, shuffled together with a fixed seed, `CONCURRENCY` at a
  time, so load and Dovecot's state fall on every kind alike.
* Every try comes from its own source address (127.0.104.0/21, octets 1-254): Dovecot
  (anvil) delays later logins from a forwarded client address that failed, and the
  gateway's defense counts per address and per (account, address). The `[defense]`
  thresholds are raised so that the defense neither delays nor blocks anything
  during the run; the only blocks are the ones placed on purpose (written into the
  gateway's state database, which the gateway reads blocks from). The audit log
  proves afterwards that every try failed for the intended reason, undelayed.
* The clock runs from sending LOGIN to reading the tagged answer, and the whole
  answer must be the one tagged line `NO [AUTHENTICATIONFAILED] Authentication
  failed.` (nothing untagged, no [ALERT]: the deny rule carries no alert).
* Warm-up: until the gateway has seen an upstream refusal, its floor is
  `failure_delay` alone (1 s) while a wrong password takes Dovecot's 1.5 to 2.5 s.
  24 untimed wrong passwords, started 0.1 s apart, first give the floor its
  refusal samples, so the run measures the steady state (the cold start is a
  known, short window). Started all at once they would meet Dovecot's failure
  timer in one phase, and a floor computed from such alike samples can sit
  below the refusals that follow.

Pass criterion: all the medians within 10 % of each other. The message reports
each kind's median, p10, p90 and max, and a two-sided Mann-Whitney U test (normal
approximation with tie correction) of each kind against all the others, with its
effect size P(kind > other); those are reported, not asserted.

Source addresses: 127.0.104.0/21.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import math
import random
import secrets
import ssl
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.state import open_store
from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for

pytestmark = pytest.mark.dovecot

KINDS = (
    "unknown-user",
    "wrong-password",
    "missing-factor",
    "blocked-source",
    "locked-account",
    "policy-deny",
    # Beyond the six: a password field ending in six digits is read two ways
    # (password alone, password + code); both readings must cost one refusal's time.
    "wrong-password-digits",
    "right-password-wrong-code",
)
TRIES = 200
WARMUP = 24
WARMUP_STAGGER = 0.1
CONCURRENCY = 64
SEED = 4
# The medians may differ by at most this fraction of the smallest one.
MAX_SPREAD = 0.10

SOURCES = [
    str(a) for a in ipaddress.ip_network("127.0.104.0/21") if 1 <= int(str(a).split(".")[3]) <= 254
]

# Far above what the run produces: no delay, no block, no spray detection, no
# under-attack posture (which would lower every threshold) from the defense itself.
DEFENSE = """
[defense]
pair_free = 100000
pair_block = 100000
source_free = 100000
source_failures = 100000
source_accounts = 100000
network_failures = 100000
network_accounts = 100000
account_attacked = 100000
account_lockout = 100000
spray_accounts = 100000
posture_min_failures = 100000000
"""

DENY_RULE = "timing-deny"
BLOCK_REASON = "timing test: blocked source"
LOCK_REASON = "timing test: locked account"


def _policy(denied: str) -> str:
    return f"""
[groups]
timing-denied = ["{denied}"]

[[policy.rules]]
name = "{DENY_RULE}"
action = "deny"
groups = ["timing-denied"]

[[policy.rules]]
name = "everyone-else"
action = "allow"
"""


def _default_failure_timing(text: str) -> str:
    """Drop the test harness's quick failure timing: the gateway's defaults apply."""
    for line in ("failure_delay = 0.05\n", "failure_jitter = 0.01\n"):
        assert line in text, text
        text = text.replace(line, "", 1)
    return text


def _guess() -> str:
    """A wrong password that ends in a letter: never read as password + 6-digit code."""
    return f"guess-{secrets.token_hex(8)}-x"


@dataclass(frozen=True)
class Accounts:
    wrong: str  # exists; guessed at (and the account the blocked source guesses at)
    mfa: str  # has an app password; its primary password alone is a missing factor
    mfa_password: str
    locked: str  # locked for unfamiliar sources
    locked_password: str
    denied: str  # in the denied group; its app password is right


@dataclass(frozen=True)
class Try:
    kind: str
    src: str
    user: str
    password: str


@dataclass(frozen=True)
class Sample:
    kind: str
    src: str
    seconds: float
    lines: tuple[bytes, ...]


@pytest.fixture(scope="module")
def accounts(dovecot: DovecotServer) -> Accounts:
    tag = secrets.token_hex(3)
    names = {role: f"tw{role}{tag}" for role in ("wrong", "mfa", "locked", "denied")}
    passwords = {role: f"Primary-{secrets.token_hex(8)}-pw" for role in names}
    for role in ("wrong", "mfa", "locked"):
        dovecot.users[names[role]] = passwords[role]
    dovecot.add_user(names["denied"], passwords["denied"])  # writes the file once, waits
    return Accounts(
        wrong=names["wrong"],
        mfa=names["mfa"],
        mfa_password=passwords["mfa"],
        locked=names["locked"],
        locked_password=passwords["locked"],
        denied=names["denied"],
    )


@pytest.fixture(scope="module")
def gw_timing(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, accounts: Accounts
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-timing"),
        dovecot,
        login="master",
        methods=("app-password", "password+totp"),
        edit=lambda text: _default_failure_timing(text) + DEFENSE + _policy(accounts.denied),
    ) as gw:
        yield gw


def _plan(accounts: Accounts, denied_app_password: str) -> list[Try]:
    rng = random.Random(SEED)
    kinds = [kind for _ in range(TRIES) for kind in KINDS]
    rng.shuffle(kinds)
    sources = SOURCES[:-WARMUP]  # the last ones are the warm-up's
    rng.shuffle(sources)
    assert len(sources) >= len(kinds)
    plan = []
    for kind, src in zip(kinds, sources, strict=False):
        if kind == "unknown-user":
            user, password = f"twnobody{secrets.token_hex(4)}", _guess()
        elif kind in ("wrong-password", "blocked-source"):
            user, password = accounts.wrong, _guess()
        elif kind == "missing-factor":
            user, password = accounts.mfa, accounts.mfa_password
        elif kind == "wrong-password-digits":
            user, password = accounts.mfa, _guess() + f"{rng.randrange(10**6):06d}"
        elif kind == "right-password-wrong-code":
            user, password = accounts.mfa, accounts.mfa_password + f"{rng.randrange(10**6):06d}"
        elif kind == "locked-account":
            # The right password: a locked account refuses it from unfamiliar sources.
            user, password = accounts.locked, accounts.locked_password
        else:
            user, password = accounts.denied, denied_app_password
        plan.append(Try(kind, src, user, password))
    return plan


def _place_blocks(gw: GatewayProcess, plan: Sequence[Try], locked: str) -> None:
    now = time.time()
    store = open_store(f"sqlite:///{gw.base}/state.db")
    try:
        for t in plan:
            if t.kind == "blocked-source":
                store.block_put(
                    Block(Target(TargetKind.SOURCE, t.src), BLOCK_REASON, 1, now, now + 3600)
                )
        store.block_put(
            Block(Target(TargetKind.ACCOUNT_UNFAMILIAR, locked), LOCK_REASON, 1, now, now + 3600)
        )
    finally:
        store.close()


def _measure(gw: GatewayProcess, tls: ssl.SSLContext, t: Try) -> Sample:
    with RawClient(gw.implicit_port, t.src, tls=tls, timeout=30.0) as c:
        c.line()  # the greeting: TLS is up, the gateway is waiting for a command
        command = f'a LOGIN "{t.user}" "{t.password}"\r\n'.encode()
        started = time.perf_counter()
        c.send(command)
        lines = c.until_tagged(b"a")
        seconds = time.perf_counter() - started
    return Sample(t.kind, t.src, seconds, tuple(lines))


def _run(gw: GatewayProcess, plan: Sequence[Try], stagger: float = 0.0) -> list[Sample]:
    """Every try of `plan`, CONCURRENCY at a time; `stagger`: the n-th starts no
    sooner than n x stagger seconds after the first."""
    tls = gw.client_ssl()
    began = time.monotonic()

    def one(n: int, t: Try) -> Sample:
        time.sleep(max(0.0, began + n * stagger - time.monotonic()))
        return _measure(gw, tls, t)

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, range(len(plan)), plan))


# -- statistics -------------------------------------------------------------------


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test, normal approximation with tie correction and
    continuity correction: (p value, P(a > b) + P(a = b) / 2)."""
    n1, n2 = len(a), len(b)
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    n = n1 + n2
    rank_sum_a = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2 + 1  # average rank of the tied run i..j (1-based)
        count = j - i + 1
        ties += count**3 - count
        rank_sum_a += rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        i = j + 1
    u = rank_sum_a - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0, u / (n1 * n2)
    z = (abs(u - mean) - 0.5) / math.sqrt(variance)
    return math.erfc(max(z, 0.0) / math.sqrt(2)), u / (n1 * n2)


def _report(samples: Sequence[Sample]) -> tuple[dict[str, float], str]:
    by_kind = {k: sorted(s.seconds for s in samples if s.kind == k) for k in KINDS}
    medians = {k: statistics.median(v) for k, v in by_kind.items()}
    rows = [
        f"{'kind':<16}{'n':>5}{'median':>9}{'p10':>8}{'p90':>8}{'max':>8}"
        f"{'MWU p':>9}{'P(>rest)':>10}"
    ]
    for kind, values in by_kind.items():
        rest = [s.seconds for s in samples if s.kind != kind]
        p, effect = mann_whitney(values, rest)
        rows.append(
            f"{kind:<16}{len(values):>5}{medians[kind]:>9.3f}{_quantile(values, 0.1):>8.3f}"
            f"{_quantile(values, 0.9):>8.3f}{values[-1]:>8.3f}{p:>9.3g}{effect:>10.3f}"
        )
    low, high = min(medians.values()), max(medians.values())
    rows.append(f"median spread: {(high - low) / low:.1%} of the smallest (limit {MAX_SPREAD:.0%})")
    return medians, "\n".join(rows)


# -- the test -----------------------------------------------------------------------


def test_the_six_failure_kinds_take_the_same_time(
    gw_timing: GatewayProcess, accounts: Accounts
) -> None:
    gw = gw_timing
    gw.create_app_password(accounts.mfa, "phone")  # enrolled: its bare password is a signal
    # A code enrolled too: six digits after its password read as a (wrong) code.
    gw.cli("totp", "enroll", accounts.mfa, "--json")
    denied_app_password = gw.create_app_password(accounts.denied, "phone")
    plan = _plan(accounts, denied_app_password)
    _place_blocks(gw, plan, accounts.locked)

    # Warm-up (untimed): upstream refusals give the adaptive floor its samples,
    # staggered so that they do not all meet Dovecot's failure timer in one phase.
    warmup = [Try("warm-up", src, accounts.wrong, _guess()) for src in SOURCES[-WARMUP:]]
    assert not {t.src for t in warmup} & {t.src for t in plan}
    for sample in _run(gw, warmup, stagger=WARMUP_STAGGER):
        assert sample.lines == (b"a " + AUTH_FAILED,), sample

    started = time.monotonic()
    samples = _run(gw, plan)
    elapsed = time.monotonic() - started
    medians, table = _report(samples)
    print(f"\n{len(samples)} timed tries in {elapsed:.1f} s, {CONCURRENCY} at a time\n{table}")

    # The text: one tagged line, the same for every kind.
    wrong_text = [s for s in samples if s.lines != (b"a " + AUTH_FAILED,)]
    assert not wrong_text, wrong_text[:5]

    # Each kind failed for its own reason, and the defense delayed none of them.
    planned = {t.src: t for t in plan}

    def audited() -> dict[str, dict[str, object]]:
        events = {e["src"]: e for e in gw.events("auth") if e.get("src") in planned}
        return events if len(events) == len(planned) else {}

    events: dict[str, dict[str, object]] = wait_for(audited, 10.0, "an auth event per try")
    expected = {
        "unknown-user": ("invalid", "wrong password"),
        "wrong-password": ("invalid", "wrong password"),
        "missing-factor": ("missing_factor", "correct password without a second factor"),
        "blocked-source": ("invalid", f"blocked: {BLOCK_REASON}"),
        "locked-account": ("invalid", f"blocked: {LOCK_REASON}"),
        "policy-deny": ("denied", "policy: "),
        "wrong-password-digits": ("invalid", "wrong password"),
        "right-password-wrong-code": ("missing_factor", "correct password"),
    }
    for src, t in planned.items():
        event = events[src]
        result, reason = expected[t.kind]
        assert event["result"] == result, (t, event)
        assert str(event["reason"]).startswith(reason), (t, event)
        assert event.get("delay") is None, (t, event)
        if t.kind == "policy-deny":
            assert event.get("rule") == DENY_RULE, (t, event)

    # The timing: all medians within 10 % of each other.
    low, high = min(medians.values()), max(medians.values())
    assert (high - low) / low <= MAX_SPREAD, f"a timing oracle:\n{table}"
