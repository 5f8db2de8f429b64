"""Run the fuzz targets: for a time or a number of executions, or replay a corpus
under coverage.py.

    fuzz/run.py --time 30 --jobs 2           every target 30 s from its seed corpus,
                                             two at a time (CI: one per core)
    fuzz/run.py --runs 1000000 framer sasl   those targets, 10^6 executions each
    fuzz/run.py --runs 1000000 --merge sasl  ... then add what found new coverage to
                                             fuzz/corpus/sasl (libFuzzer -merge=1)
    fuzz/run.py --coverage                   line coverage of each parsed module over
                                             the committed corpus (no fuzzing)
    fuzz/run.py --replay sasl FILE...        run those inputs once, uninstrumented
                                             (a crash file, a corpus)

Each target runs as its own libFuzzer process; new inputs go to a scratch
directory (or --work DIR), never into the committed corpus unless --merge is given.
Crashes, contract breaks and timeouts are written to fuzz/artifacts/<target>/ and
end this script with status 1 and a line naming the target. A line per target
gives executions, seconds, libFuzzer's edge coverage (cov) and features (ft), and
the corpus size.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
SRC = ROOT / "src" / "imapguard"

#: What each target parses: the module whose line coverage is reported, and the
#: parts of it the target is about when the module holds more (None: all of it).
_LINES = ("_Lines", "ResponseParser", "_text", "sniff_greeting")
MEASURED: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "framer": ("imap/framing.py", None),
    "commands": ("imap/commands.py", None),
    "sasl": ("imap/preauth.py", None),
    "oauth": (
        "auth/oauth/sasl.py",
        (
            *("BearerCredentials", "parse_oauthbearer", "parse_xoauth2", "_check_size"),
            *("_kvpairs", "_unescape_saslname", "_check_user", "_bearer_token"),
        ),
    ),
    "upstream": ("imap/login.py", None),
    "proxyproto": ("gateway/proxyproto.py", None),
    # The IMAP response reader the scanner shares with the gateway's upstream login.
    "scanner_imap": ("imap/responses.py", None),
    "scanner_pop3": (
        "scanner/dialogs.py",
        (*_LINES, "Pop3Response", "Pop3Parser", "parse_capa"),
    ),
    "scanner_smtp": (
        "scanner/dialogs.py",
        (*_LINES, "SmtpReply", "SmtpParser", "_smtp_reply", "EhloInfo", "parse_ehlo"),
    ),
    "targets": (
        "scanner/targets.py",
        ("parse_ports", "_expand_files", "_parse_one", "_number", "_port", "resolve", "_hosts"),
    ),
}
#: Longest input libFuzzer makes: the scaled-down limits are reached well under it,
#: and short inputs keep an execution cheap. The scanner and upstream targets need
#: a response of a few hundred bytes and more than one of them.
MAX_LEN = {"upstream": 2048, "scanner_imap": 2048, "scanner_pop3": 2048, "scanner_smtp": 2048}
#: libFuzzer's status line: "#1234  DONE   cov: 200 ft: 640 corp: 91/2934b ..."
_STATUS = re.compile(rb"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.MULTILINE)
_CRASH = re.compile(rb"^(?:==\d+== ERROR: libFuzzer: .*|.*Error: .*|SUMMARY: .*)$", re.MULTILINE)


def targets(names: list[str]) -> list[str]:
    known = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"fuzz: no target {', '.join(unknown)} (known: {', '.join(known)})")
    return names or known


def fuzz(name: str, args: argparse.Namespace, work_root: Path) -> bool:
    corpus = FUZZ / "corpus" / name
    work = work_root / name
    work.mkdir(parents=True, exist_ok=True)
    artifacts = FUZZ / "artifacts" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    log = work_root / f"{name}.log"
    limit = f"-max_total_time={args.time}" if args.runs is None else f"-runs={args.runs}"
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{name}.py"),
        limit,
        f"-timeout={args.timeout}",
        f"-max_len={MAX_LEN.get(name, 1024)}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(work),
        str(corpus),
    ]
    started = time.monotonic()
    wall_start = time.time() - 1
    with log.open("wb") as out:
        rc = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.monotonic() - started
    text = log.read_bytes()
    status = _STATUS.findall(text)
    execs = re.search(rb"stat::number_of_executed_units: (\d+)", text)
    runs = int(execs.group(1)) if execs else int(status[-1][0]) if status else 0
    cov, ft, corp = (int(x) for x in status[-1][1:]) if status else (0, 0, 0)
    print(
        f"fuzz: {name:13} {runs:>9} execs {seconds:7.0f} s  cov {cov:4}  ft {ft:5}"
        f"  corpus {corp:4}  {'ok' if rc == 0 else 'FAILED'}",
        flush=True,
    )
    if rc != 0:
        print(f"fuzz: target {name} FAILED (exit {rc}); log {log}", flush=True)
        for line in _CRASH.findall(text)[-6:]:
            print(f"fuzz: {name}: {line.decode('utf-8', 'replace')}", flush=True)
        for artifact in sorted(artifacts.iterdir()):
            if artifact.stat().st_mtime < wall_start:
                continue  # from an earlier run
            data = artifact.read_bytes()
            print(f"fuzz: {name}: input {artifact} ({len(data)} bytes)", flush=True)
            print(f"fuzz: {name}: {data[:600]!r}{'...' if len(data) > 600 else ''}", flush=True)
        return False
    if args.merge:
        # libFuzzer's merge runs argv[0] again: the script itself, by its shebang,
        # with this interpreter first on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        merged = subprocess.run(
            [str(FUZZ / f"fuzz_{name}.py"), "-merge=1", str(corpus), str(work)],
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PATH": path},
            check=True,
        )
        added = re.findall(rb"MERGE-OUTER: .*new files.*", merged.stderr)
        print(f"fuzz: {name}: {added[-1].decode() if added else 'merge said nothing'}")
        print(f"fuzz: {name}: corpus now {len(list(corpus.iterdir()))} files", flush=True)
    return True


def replay(name: str, files: list[Path]) -> int:
    """Run each input once; the number that broke the contract."""
    os.environ["IMAPGUARD_FUZZ_NO_INSTRUMENT"] = "1"
    sys.path.insert(0, str(FUZZ))
    module = importlib.import_module(f"fuzz_{name}")
    inputs = [f for path in files for f in (sorted(path.iterdir()) if path.is_dir() else [path])]
    failed = 0
    for path in inputs:
        try:
            module.test_one_input(path.read_bytes())
        except Exception as exc:  # every exception is a finding: report them all
            failed += 1
            print(f"fuzz: {name}: {path}: {type(exc).__name__}: {exc}"[:2000], flush=True)
    print(f"fuzz: {name}: replayed {len(inputs)} inputs, {failed} failed", flush=True)
    return failed


def _part(path: Path, names: tuple[str, ...], lines: set[int]) -> set[int]:
    """The lines of `lines` inside the top-level definitions called `names`."""
    spans = [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.name in names
    ]
    return {n for n in lines if any(a <= n <= b for a, b in spans)}


def coverage(name: str) -> bool:
    """Line coverage of the parsed module over the committed corpus (coverage.py)."""
    module, names = MEASURED[name]
    measured = SRC / module
    corpus = FUZZ / "corpus" / name
    with tempfile.TemporaryDirectory() as tmp:
        data, report = Path(tmp) / ".coverage", Path(tmp) / "coverage.json"
        base = [sys.executable, "-m", "coverage"]
        run = [*base, "run", f"--data-file={data}", f"--include={measured}", __file__]
        rc = subprocess.call([*run, "--replay", name, str(corpus)], cwd=ROOT)
        subprocess.check_call(
            [*base, "json", "-q", f"--data-file={data}", "-o", str(report)],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        result = json.loads(report.read_text())["files"][str(measured.relative_to(ROOT))]
    executed, missing = set(result["executed_lines"]), set(result["missing_lines"])
    total = 100 * len(executed) / (len(executed) + len(missing))
    text = f"{total:.0f} % of {len(executed) + len(missing)} statements"
    if names is not None:
        run_part, miss_part = _part(measured, names, executed), _part(measured, names, missing)
        share = 100 * len(run_part) / (len(run_part) + len(miss_part))
        text += f"; its parser part {share:.0f} % of {len(run_part) + len(miss_part)}"
    files = len(list(corpus.iterdir()))
    print(f"fuzz: {name:13} src/imapguard/{module}: {text} ({files} inputs)", flush=True)
    return rc == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--time", type=int, default=30, help="seconds per target")
    parser.add_argument("--runs", type=int, help="executions per target (instead of --time)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument(
        "--jobs", type=int, default=1, help="targets fuzzed at once (each uses one core)"
    )
    parser.add_argument("--work", type=Path, help="keep new inputs and logs here")
    parser.add_argument("--merge", action="store_true", help="add new coverage to the corpus")
    parser.add_argument("--coverage", action="store_true", help="measure line coverage")
    parser.add_argument("--replay", action="store_true", help="run TARGET FILE... once")
    args = parser.parse_args()
    if args.replay:
        name, *paths = args.targets
        return 1 if replay(targets([name])[0], [Path(p) for p in paths]) else 0
    names = targets(args.targets)
    if args.coverage:
        return 0 if all([coverage(name) for name in names]) else 1
    work_root = args.work or Path(tempfile.mkdtemp(prefix="imapguard-fuzz-"))
    # Each target is a process of its own; the threads only wait for them. A target's
    # lines all start with its name, so interleaved output still reads.
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        passed = list(pool.map(lambda name: fuzz(name, args, work_root), names))
    failed = [name for name, ok in zip(names, passed, strict=True) if not ok]
    if failed:
        print(f"fuzz: FAILED targets: {', '.join(failed)} (logs in {work_root})", flush=True)
        return 1
    if args.work is None:
        shutil.rmtree(work_root, ignore_errors=True)
    print(f"fuzz: {len(names)} targets passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
