"""How long `imapguard scan` takes over a /24, and how much memory it needs.

Run by hand (needs root, Debian dovecot-imapd and dovecot-pop3d)::

    .venv/bin/python -m bench.scan            # full run, about 3 minutes
    .venv/bin/python -m bench.scan --quick    # one run per setting

The lab (tests.scanlab.start_lab) puts 20 live services on 6 of the 254 host
addresses of 127.0.66.0/24, on the standard ports (so nothing else may listen on
*:143, 993, 110, 995, 587 or 465):

    2 x dovecot:good        IMAP 143/993, POP3 110/995       (8 services)
    1 x dovecot:plaintext   the same, cleartext login allowed (4)
    1 x dovecot:tls10       the same, TLS 1.0/1.1 accepted    (4)
    1 x submission          587 STARTTLS + 465 implicit       (2)
    1 x imap:inject_tls     143 + 993, STARTTLS injection     (2)

Then `imapguard scan 127.66.0.0/24` (the six default ports: 1,524 endpoints,
1,504 of them closed) runs as a child process with `--concurrency 1` and with
`--concurrency 32`, `--rate 2000` so that pacing does not hide the difference,
`--ca-file` the lab CA and `--server-name mail.lab.test`. Measured per run: wall
time, the child's peak resident memory (wait4 ru_maxrss) and its CPU time; each
run's JSON report is checked: exactly the 20 services found, each with a grade.

On loopback a closed port answers with a reset at once; on a real network a
dead address costs up to `--timeout` (5 s) per endpoint, bounded by the
concurrency: 1,504 closed endpoints at 32 at a time cost about 4 minutes at
worst, one at a time more than 2 hours. The ratio measured here is the lower
bound of that gain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.scanlab import start_lab

from bench._common import (
    Row,
    Summary,
    argument_parser,
    check_prerequisites,
    report,
    start,
    stopped,
    work_directory,
)

NETWORK = "127.66.0.0/24"
KINDS = (
    "dovecot:good",
    "dovecot:plaintext",
    "dovecot:good",
    "dovecot:tls10",
    "submission:tls_required",
    "imap:inject_tls",
)
LIVE_SERVICES = 20


@dataclasses.dataclass(frozen=True)
class Params:
    repeats: int = 3
    rate: int = 2000
    max_foreign: float = 0.15
    retries: int = 0


@dataclasses.dataclass
class ScanRun:
    concurrency: int
    wall: float
    cpu: float
    max_rss_kib: int
    services: int
    closed: int
    grades: dict[str, str]


def _scan(out: Path, concurrency: int, p: Params, ca: Path, server_name: str) -> ScanRun:
    cmd = [
        sys.executable,
        "-m",
        "imapguard.cli",
        "scan",
        NETWORK,
        "--format",
        "json",
        "--output",
        str(out),
        "--concurrency",
        str(concurrency),
        "--rate",
        str(p.rate),
        "--ca-file",
        str(ca),
        "--server-name",
        server_name,
    ]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"scan failed ({proc.returncode}): {stderr[-2000:]}")
    doc = json.loads(out.read_text())
    services = doc["services"]
    grades = {f"{s['address']}:{s['port']}": s["grade"] for s in services}
    if len(services) != LIVE_SERVICES or not all(grades.values()):
        raise SystemExit(f"expected {LIVE_SERVICES} graded services, got {grades}")
    return ScanRun(
        concurrency,
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss,
        len(services),
        doc["ports_closed"],
        grades,
    )


def main(argv: list[str] | None = None) -> int:
    ap: argparse.ArgumentParser = argument_parser("bench.scan", __doc__ or "", ["scan"])
    args = ap.parse_args(argv)
    p = Params(repeats=1 if args.quick else 3, max_foreign=args.max_foreign)
    check_prerequisites(
        "dovecot-imapd dovecot-pop3d",
        [Path("/usr/sbin/dovecot"), Path("/usr/lib/dovecot/pop3-login")],
    )
    started = time.monotonic()
    info = start("scan", args.quick, p, nginx=False)
    runs: dict[int, list[ScanRun]] = {1: [], 32: []}
    try:
        with work_directory(args.keep, "igbench-scan-") as (base, stack):
            t0 = time.perf_counter()
            lab = stack.enter_context(start_lab(KINDS, base / "lab", network=NETWORK))
            endpoints = len(lab.endpoints)
            print(
                f"# lab: {len(lab.hosts)} hosts, {endpoints} services, started in "
                f"{time.perf_counter() - t0:.1f} s: "
                + ", ".join(f"{h.address} {h.kind}" for h in lab.hosts),
                flush=True,
            )
            if endpoints != LIVE_SERVICES:
                raise SystemExit(f"the lab has {endpoints} services, not {LIVE_SERVICES}")
            for r in range(p.repeats):
                for concurrency in (1, 32):
                    run = _scan(
                        base / f"scan-{concurrency}-{r}.json",
                        concurrency,
                        p,
                        lab.ca_cert,
                        lab.server_name,
                    )
                    runs[concurrency].append(run)
                    print(
                        f"  r{r + 1} --concurrency {concurrency:>2}: {run.wall:6.1f} s wall, "
                        f"{run.cpu:5.1f} s CPU, peak RSS {run.max_rss_kib / 1024:5.1f} MiB, "
                        f"{run.services} services, {run.closed} closed",
                        flush=True,
                    )
            grades = runs[32][-1].grades
            print("# grades: " + ", ".join(f"{k} {v}" for k, v in sorted(grades.items())))
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, SystemExit) and isinstance(exc.code, str):
            print(f"\nBENCHMARK ERROR: {exc.code}", file=sys.stderr)
            return 2
        return stopped(exc)

    def med(c: int, f: str) -> float:
        return float(statistics.median(getattr(r, f) for r in runs[c]))

    summary = Summary()
    w1, w32 = med(1, "wall"), med(32, "wall")
    m1, m32 = med(1, "max_rss_kib") / 1024, med(32, "max_rss_kib") / 1024
    summary.rows = [
        Row(
            "a",
            f"wall time, {NETWORK} x 6 ports, --concurrency 32 (s)",
            f"{w32:.1f}",
            f"--concurrency 1: {w1:.1f}",
            f"{w1 / w32:.1f}x faster",
            "report",
            "",
        ),
        Row(
            "b",
            "peak memory (RSS, MiB), --concurrency 32",
            f"{m32:.1f}",
            f"--concurrency 1: {m1:.1f}",
            f"{m32 / m1:.2f}",
            "report",
            "",
        ),
        Row(
            "c",
            "CPU time (s), --concurrency 32",
            f"{med(32, 'cpu'):.1f}",
            f"--concurrency 1: {med(1, 'cpu'):.1f}",
            "",
            "info",
            "",
        ),
    ]
    summary.values = {
        "runs": {c: [dataclasses.asdict(r) for r in rs] for c, rs in runs.items()},
    }

    def raw() -> dict[str, Any]:
        return {"runs": summary.values["runs"]}

    return report(summary, {}, started, info, p, args.json, raw)


if __name__ == "__main__":
    sys.exit(main())
