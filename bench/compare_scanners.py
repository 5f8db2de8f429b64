"""imapguard, testssl and nmap on the same lab targets: what each reports, and how fast.

Run by hand (needs root, Debian dovecot-imapd, dovecot-pop3d, testssl.sh and nmap)::

    .venv/bin/python -m bench.compare_scanners              # about 20 minutes
    .venv/bin/python -m bench.compare_scanners --quick      # 3 targets, 1 testssl port
    .venv/bin/python -m bench.compare_scanners --testssl all   # every port: ~45 minutes
    .venv/bin/python -m bench.compare_scanners --markdown out.md --out raw/   # keep both

It starts the scanner lab (tests.scanlab.start_lab) on the standard ports of distinct
loopback addresses (nmap recognises implicit TLS only on 993/995/465, and only with
``-sV``), then, target by target and on the six default ports of each (P = 110, 143,
465, 587, 993, 995; the closed ones cost a refused connect), runs

* ``imapguard scan ADDRESS --ports P,.. --format json --ca-file LABCA --server-name mail.lab.test``
* ``nmap -Pn -n -sV -p P,.. --script imap-capabilities,pop3-capabilities,smtp-commands,
  ssl-enum-ciphers,ssl-cert -oX FILE ADDRESS``
* ``testssl --quiet --color 0 --warnings batch -n none --openssl-timeout 10
  --connect-timeout 10 --add-ca LABCA --ip ADDRESS --jsonfile-pretty FILE
  [--starttls imap|pop3|smtp] mail.lab.test:PORT`` -- one port per target by default
  (:data:`TESTSSL_PORTS`): testssl needs about a minute per port.

and then imapguard and nmap once more over the whole lab in one invocation each. Every
run is timed with ``time.perf_counter`` around the child process; the child's CPU time
comes from ``RUSAGE_CHILDREN`` and the load average is noted before each run (the
machine has 2 cores and is shared).

Rules of the comparison:

* Each tool's output items are mapped onto the catalog IDs of imapguard's scanner
  (src/imapguard/scanner/catalog.toml), with three levels: ``found`` (the tool names it
  as a problem: imapguard's ``fail`` findings except the ST-10 observation; testssl items of
  severity LOW..CRITICAL; an nmap ssl-enum-ciphers warning -- a grade below A is listed
  apart, it names no check), ``shown`` (printed
  without a verdict: an nmap capability list without LOGINDISABLED, nmap's certificate
  dates, a TLSv1.0 section of ssl-enum-ciphers) and ``aborted`` (the scan stops with an
  error that points at the problem without naming it: testssl's "doesn't seem to be a
  TLS/SSL enabled server").
* :data:`TRUTH` says what each lab target really has wrong, from the lab's design
  (tests/scanlab.py), not from any scanner's output; a tool is scored on the ports it
  scanned. What a tool reports outside :data:`TRUTH` is listed separately, as are
  testssl items that have no catalog ID and testssl checks that failed ("WARN").
* The verdict -- does imapguard find every problem the other tools
  find? -- is computed per port: every ID testssl or nmap found or showed on a port must
  be among imapguard's findings on that port; the misses are printed.

Output: Markdown on stdout; the raw outputs (imapguard JSON, testssl JSON and text, nmap
XML, each tool's console output in ``*.log``) stay in ``--out`` (default: a new
directory under /tmp) as the evidence. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.scanlab import SERVER_NAME, Lab, LabEndpoint, LabHost, start_lab

import imapguard
from imapguard.scanner.catalog import CATALOG

Level = Literal["found", "shown", "aborted"]
Tool = Literal["imapguard", "testssl", "nmap"]
TOOLS: tuple[Tool, ...] = ("imapguard", "testssl", "nmap")

TESTSSL = Path("/usr/bin/testssl")
NMAP = Path("/usr/bin/nmap")
NMAP_SCRIPTS = "imap-capabilities,pop3-capabilities,smtp-commands,ssl-enum-ciphers,ssl-cert"
#: Ports the lab binds with standard_ports=True; nothing else may listen on them.
LAB_PORTS = (110, 143, 465, 587, 993, 995)
#: A hung openssl (testssl against a PREAUTH server waits forever without
#: --openssl-timeout) must not stall the run.
RUN_TIMEOUT = 900.0

#: The lab targets (tests/scanlab.py), in order; one loopback address each.
KINDS = (
    "dovecot:good",
    "dovecot:plaintext",
    "dovecot:no_starttls",
    "dovecot:tls10",
    "dovecot:expired",
    "dovecot:self_signed",
    "dovecot:wrong_name",
    "submission:auth_before_tls",
    "imap:inject_tls",
    "imap:preauth",
)
QUICK_KINDS = ("dovecot:good", "dovecot:plaintext", "dovecot:tls10")
#: The one port per target that testssl scans by default (about a minute each): IMAP and
#: POP3, STARTTLS and implicit TLS, and submission, spread over the targets.
TESTSSL_PORTS: dict[str, int] = {
    "dovecot:good": 143,
    "dovecot:plaintext": 110,
    "dovecot:no_starttls": 143,
    "dovecot:tls10": 993,
    "dovecot:expired": 995,
    "dovecot:self_signed": 993,
    "dovecot:wrong_name": 143,
    "submission:auth_before_tls": 587,
    "imap:inject_tls": 143,
    "imap:preauth": 143,
}
QUICK_TESTSSL_PORTS = {"dovecot:tls10": 993}

# -- what the lab really has wrong ------------------------------------------------------

_NO_REVOCATION = "CERT-08"  # every lab certificate names no OCSP responder and no CRL


def _dovecot_truth(
    imap_clear: Iterable[str] = (),
    pop3_clear: Iterable[str] = (),
    every_tls_port: Iterable[str] = (),
    twins: bool = True,
    tls: bool = True,
) -> dict[tuple[str, bool], frozenset[str]]:
    tls_ids = {*every_tls_port, _NO_REVOCATION} if tls else set()
    truth = {
        ("imap", False): frozenset({*imap_clear, *tls_ids}),
        ("pop3", False): frozenset({*pop3_clear, *tls_ids}),
    }
    if twins:
        truth[("imap", True)] = frozenset(tls_ids)
        truth[("pop3", True)] = frozenset(tls_ids)
    return truth


#: kind -> (protocol, implicit TLS?) -> the catalog IDs that server really has, from its
#: configuration in tests/scanlab.py (PROFILES, the toys), not from any scanner's output.
#: ST-10 (capabilities before/after TLS) is an observation, not a problem, and not listed.
TRUTH: dict[str, dict[tuple[str, bool], frozenset[str]]] = {
    # ssl = required, TLS 1.2+ with ECDHE+AEAD only, twins, a valid certificate.
    "dovecot:good": _dovecot_truth(),
    # ssl = yes, disable_plaintext_auth = no: LOGIN / AUTH=PLAIN / USER before STARTTLS.
    "dovecot:plaintext": _dovecot_truth(
        imap_clear=("EXP-01", "AUTH-01", "AUTH-02", "AUTH-05"),
        pop3_clear=("EXP-02", "AUTH-03", "AUTH-05"),
    ),
    # ssl = no: no STARTTLS and (Dovecot drops them) no implicit-TLS twins either.
    "dovecot:no_starttls": _dovecot_truth(
        imap_clear=("EXP-01", "EXP-05", "EXP-07", "ST-01"),
        pop3_clear=("EXP-02", "EXP-05", "EXP-07", "ST-01"),
        twins=False,
        tls=False,
    ),
    # TLS 1.0/1.1 with CBC suites, no server cipher order (Dovecot's default).
    "dovecot:tls10": _dovecot_truth(every_tls_port=("TLS-02", "TLS-05", "TLS-07")),
    "dovecot:expired": _dovecot_truth(every_tls_port=("CERT-03",)),
    "dovecot:self_signed": _dovecot_truth(every_tls_port=("CERT-01",)),
    "dovecot:wrong_name": _dovecot_truth(every_tls_port=("CERT-02",)),
    # aiosmtpd: AUTH offered and evaluated before STARTTLS; answers a second STARTTLS
    # inside TLS with 220.
    "submission:auth_before_tls": {
        ("smtp", False): frozenset(
            {"EXP-03", "AUTH-04", "AUTH-05", "ST-05", _NO_REVOCATION},
        ),
        ("smtp", True): frozenset({_NO_REVOCATION}),
    },
    # Answers a command pipelined after STARTTLS inside the new TLS session.
    "imap:inject_tls": {
        ("imap", False): frozenset({"ST-07", _NO_REVOCATION}),
        ("imap", True): frozenset({_NO_REVOCATION}),
    },
    # "* PREAUTH [CAPABILITY IMAP4rev1 ID]" on the cleartext port: the session is open,
    # STARTTLS is neither advertised nor possible (tagged BAD; RFC 9051 §7.1.4).
    "imap:preauth": {
        ("imap", False): frozenset({"EXP-01", "EXP-07", "ST-01", "ST-09"}),
        ("imap", True): frozenset({_NO_REVOCATION}),
    },
}

#: imapguard reports these on every cleartext port as observations, not problems.
OBSERVATIONS = frozenset({"ST-10"})

# -- running the tools -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed child process."""

    tool: Tool
    target: str  # kind, or "whole lab"
    ports: tuple[int, ...]
    command: tuple[str, ...]
    wall: float
    cpu: float
    load_before: float
    returncode: int | None  # None: killed after RUN_TIMEOUT
    output: Path


def _timed(tool: Tool, target: str, ports: Sequence[int], cmd: list[str], output: Path) -> Run:
    """Run `cmd` in its own process group, timed; stdout+stderr go to `output`.log."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = output.with_name(output.name + ".log")
    began = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group is this child's alone
            proc.wait()
            code = None
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(tool, target, tuple(ports), tuple(cmd), wall, cpu, load, code, output)


def _imapguard(
    target: str, addresses: Sequence[str], ports: Sequence[int], ca: Path, out: Path
) -> Run:
    cmd = [sys.executable, "-m", "imapguard.cli", "scan", *addresses]
    cmd += ["--ports", ",".join(map(str, ports)), "--format", "json", "--output", str(out)]
    cmd += ["--ca-file", str(ca), "--server-name", SERVER_NAME]
    return _timed("imapguard", target, ports, cmd, out)


def _nmap(target: str, addresses: Sequence[str], ports: Sequence[int], out: Path) -> Run:
    cmd = [str(NMAP), "-Pn", "-n", "-sV", "-p", ",".join(map(str, ports))]
    cmd += ["--script", NMAP_SCRIPTS, "-oX", str(out), *addresses]
    return _timed("nmap", target, ports, cmd, out)


def _testssl(target: str, endpoint: LabEndpoint, ca: Path, out: Path) -> Run:
    cmd = [str(TESTSSL), "--quiet", "--color", "0", "--warnings", "batch", "-n", "none"]
    cmd += ["--openssl-timeout", "10", "--connect-timeout", "10", "--add-ca", str(ca)]
    cmd += ["--ip", endpoint.address, "--jsonfile-pretty", str(out)]
    if not endpoint.implicit_tls:
        cmd += ["--starttls", endpoint.protocol]
    # The name, not the address, so that testssl checks the certificate against it.
    cmd.append(f"{SERVER_NAME}:{endpoint.port}")
    return _timed("testssl", target, (endpoint.port,), cmd, out)


# -- reading the outputs ---------------------------------------------------------------

#: What one tool reported on one port: catalog ID -> (level, evidence).
Reported = dict[str, tuple[Level, str]]


def _add(reported: Reported, cid: str, level: Level, evidence: str) -> None:
    rank = {"found": 2, "aborted": 1, "shown": 0}
    if cid not in reported or rank[level] > rank[reported[cid][0]]:
        reported[cid] = (level, evidence)
    elif evidence not in reported[cid][1]:
        reported[cid] = (reported[cid][0], f"{reported[cid][1]}; {evidence}")


def read_imapguard(path: Path) -> dict[tuple[str, int], tuple[Reported, str, list[str]]]:
    """(address, port) -> (IDs failed, grade, IDs not tested)."""
    doc: dict[str, Any] = json.loads(path.read_text())
    out: dict[tuple[str, int], tuple[Reported, str, list[str]]] = {}
    for service in doc["services"]:
        reported: Reported = {}
        skipped: list[str] = []
        for f in service["findings"]:
            if f["status"] == "fail" and f["id"] not in OBSERVATIONS:
                _add(reported, f["id"], "found", f"{f['severity']}: {f['title']}")
            elif f["status"] != "fail":
                skipped.append(f["id"])
        out[(service["address"], int(service["port"]))] = (
            reported,
            str(service.get("grade")),
            sorted(skipped),
        )
    return out


#: testssl 3.0.8 JSON ids (regular expressions, whole id) -> catalog IDs.
TESTSSL_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"SSLv2|SSLv3|POODLE_SSL|DROWN", ("TLS-01",)),
    (r"TLS1|TLS1_1", ("TLS-02",)),
    (r"TLS1_2|TLS1_3", ("TLS-03",)),
    (r"cipherlist_(NULL|aNULL|EXPORT|LOW|3DES_IDEA)|SWEET32|RC4|FREAK", ("TLS-04",)),
    (r"cipherlist_AVERAGE|PFS|LUCKY13|BEAST_CBC_TLS1", ("TLS-05",)),
    (r"BEAST", ("TLS-02", "TLS-05")),
    (r"cipher_order", ("TLS-07",)),
    (r"DH_groups|LOGJAM.*|PFS_ECDHE_curves", ("TLS-08",)),
    (r"CRIME_TLS|secure_renego|secure_client_renego", ("TLS-09",)),
    (r"heartbleed|CCS|ROBOT|ticketbleed", ("TLS-10",)),
    (r"fallback_SCSV", ("TLS-11",)),
    (r"cert_chain_of_trust", ("CERT-01",)),
    (r"cert_trust|cert_commonName.*|cert_subjectAltName", ("CERT-02",)),
    (r"cert_expirationStatus|cert_notAfter|cert_notBefore", ("CERT-03",)),
    (r"certs_list_ordering_problem|intermediate_cert.*", ("CERT-04",)),
    (r"cert_signatureAlgorithm", ("CERT-05",)),
    (r"cert_keySize", ("CERT-06",)),
    (r"cert_validityPeriod", ("CERT-07",)),
    (r"cert_revocation|cert_ocspURL|cert_crlDistributionPoints|OCSP_stapling", ("CERT-08",)),
)
_PROBLEM = frozenset({"LOW", "MEDIUM", "HIGH", "CRITICAL"})
_NOT_TLS = "doesn't seem to be a TLS/SSL enabled server"


@dataclasses.dataclass
class TestsslPort:
    reported: Reported
    unmapped: list[str]  # LOW..CRITICAL items without a catalog ID
    failed_checks: list[str]  # WARN: testssl could not run the check
    rc: int | None


def _testssl_ids(item_id: str) -> tuple[str, ...]:
    for pattern, ids in TESTSSL_MAP:
        if re.fullmatch(pattern, item_id):
            return ids
    return ()


def read_testssl(path: Path, run: Run, implicit: bool) -> TestsslPort:
    port = TestsslPort({}, [], [], run.returncode)
    if not path.exists():
        port.failed_checks.append(f"no JSON written (exit {run.returncode})")
        return port
    doc: dict[str, Any] = json.loads(path.read_text())
    for result in doc.get("scanResult", []):
        # A scan that stopped early lists bare items; a full one groups them in sections.
        items: list[dict[str, str]] = (
            [result]
            if "id" in result
            else [i for v in result.values() if isinstance(v, list) for i in v]
        )
        for item in items:
            ident, severity, text = item["id"], item["severity"], item["finding"]
            line = f"{ident} {severity}: {text}"
            if _NOT_TLS in text:
                # On a --starttls run this is how testssl says STARTTLS did not work.
                if not implicit:
                    _add(port.reported, "ST-01", "aborted", line)
                port.failed_checks.append(line)
            elif severity in _PROBLEM:
                ids = _testssl_ids(ident)
                for cid in ids:
                    _add(port.reported, cid, "found", line)
                if not ids:
                    port.unmapped.append(line)
            elif severity in {"WARN", "FATAL"}:
                port.failed_checks.append(line)
    return port


@dataclasses.dataclass
class NmapPort:
    service: str
    reported: Reported
    unmapped: list[str]
    scripts: dict[str, str]


def _elems(node: ET.Element, key: str) -> list[str]:
    return [e.text or "" for e in node.iter("elem") if e.get("key") == key]


def _table(node: ET.Element, key: str) -> ET.Element | None:
    for t in node.iter("table"):
        if t.get("key") == key:
            return t
    return None


#: nmap ssl-enum-ciphers warning text -> catalog ID.
NMAP_WARNINGS: tuple[tuple[str, str], ...] = (
    ("64-bit block cipher", "TLS-04"),
    ("RC4", "TLS-04"),
    ("Export key exchange", "TLS-04"),
    ("anonymous", "TLS-04"),
    ("MD5", "TLS-04"),
    ("CBC-mode cipher in SSLv3", "TLS-01"),
    ("Forward Secrecy", "TLS-05"),
    ("Key exchange", "TLS-08"),
    ("certificate signature", "CERT-05"),
)


def _cleartext_capabilities(
    reported: Reported, notes: list[str], script: str, text: str, protocol: str, implicit: bool
) -> None:
    """nmap lists capabilities; a cleartext list without the STARTTLS keyword or with a
    plaintext login is shown, not judged (glued words such as LOGINDISABLEDA0001 come
    from imap-capabilities splitting the tagged OK line into the list)."""
    if script == "smtp-commands" and "," not in text:
        # smtp-commands joins the EHLO lines with ", "; one word is the first line only
        # (the server name): the keywords were never read, so nothing can be concluded.
        notes.append(f"smtp-commands printed only {text.strip()!r}: no EHLO keywords")
        return
    if implicit:
        return
    upper = text.upper()
    words = set(re.split(r"[\s(),]+", upper))
    shown = f"{script}: {text.strip()}"
    if protocol == "imap":
        if "STARTTLS" not in upper:
            _add(reported, "ST-01", "shown", shown)
        if "LOGINDISABLED" not in upper:
            _add(reported, "AUTH-01", "shown", shown)
        if "AUTH=PLAIN" in upper or "AUTH=LOGIN" in upper:
            _add(reported, "AUTH-02", "shown", shown)
    elif protocol == "pop3":
        if "STLS" not in words:
            _add(reported, "ST-01", "shown", shown)
        if "USER" in words or re.search(r"SASL\([^)]*\b(PLAIN|LOGIN)\b", upper):
            _add(reported, "AUTH-03", "shown", shown)
    elif protocol == "smtp":
        if "STARTTLS" not in words:
            _add(reported, "ST-01", "shown", shown)
        if re.search(r"\bAUTH\b", upper):
            _add(reported, "AUTH-04", "shown", shown)


def _cipher_facts(reported: Reported, unmapped: list[str], script: ET.Element) -> None:
    text = script.get("output", "")
    for version in ("SSLv3", "TLSv1.0", "TLSv1.1"):
        if _table(script, version) is not None:
            _add(reported, "TLS-01" if version == "SSLv3" else "TLS-02", "shown", f"{version}")
    names = _elems(script, "name")
    weak = [n for n in names if "_CBC_" in n or not re.search(r"ECDHE|DHE|TLS_AKE", n)]
    if weak:
        _add(reported, "TLS-05", "shown", f"{len(weak)} non-AEAD/non-PFS suites, e.g. {weak[0]}")
    if weak and "cipher preference: client" in text:
        _add(reported, "TLS-07", "shown", "cipher preference: client")
    least = _elems(script, "least strength")
    if least and least[0] != "A":
        unmapped.append(f"ssl-enum-ciphers least strength {least[0]}")
    warnings = [t for t in script.iter("table") if t.get("key") == "warnings"]
    for table in warnings:
        for e in table.iter("elem"):
            w = e.text or ""
            cid = next((c for key, c in NMAP_WARNINGS if key.lower() in w.lower()), None)
            if cid:
                _add(reported, cid, "found", f"ssl-enum-ciphers warning: {w}")
            else:
                unmapped.append(f"ssl-enum-ciphers warning: {w}")


def _names(table: ET.Element) -> list[tuple[str | None, str | None]]:
    return [(e.get("key"), e.text) for e in table.iter("elem")]


def _certificate_facts(reported: Reported, script: ET.Element, now: dt.datetime) -> None:
    validity = _table(script, "validity")
    if validity is not None:
        after = _elems(validity, "notAfter")
        before = _elems(validity, "notBefore")
        if after and dt.datetime.fromisoformat(after[0]).replace(tzinfo=dt.UTC) < now:
            _add(reported, "CERT-03", "shown", f"Not valid after: {after[0]}")
        if before and dt.datetime.fromisoformat(before[0]).replace(tzinfo=dt.UTC) > now:
            _add(reported, "CERT-03", "shown", f"Not valid before: {before[0]}")
    subject, issuer = _table(script, "subject"), _table(script, "issuer")
    if subject is not None and issuer is not None and _names(subject) == _names(issuer):
        _add(reported, "CERT-01", "shown", "Issuer equals Subject (self-signed)")
    text = script.get("output", "")
    san = re.search(r"Subject Alternative Name: (.*)", text)
    names = re.findall(r"DNS:([^,\s]+)", san.group(1)) if san else []
    if SERVER_NAME not in names:
        _add(reported, "CERT-02", "shown", f"SAN DNS names {names or 'none'}")
    bits = _elems(script, "bits")
    if bits and bits[0].isdigit() and int(bits[0]) < 2048:
        _add(reported, "CERT-06", "shown", f"Public Key bits: {bits[0]}")
    sig = _elems(script, "sig_algo")
    if sig and re.search(r"md5|sha1With", sig[0], re.IGNORECASE):
        _add(reported, "CERT-05", "shown", f"Signature Algorithm: {sig[0]}")


def read_nmap(path: Path, protocols: Mapping[int, tuple[str, bool]]) -> dict[int, NmapPort]:
    """port -> what nmap said; `protocols` is port -> (protocol, implicit TLS)."""
    now = dt.datetime.now(dt.UTC)
    # nmap's own XML, written by the child we just ran, not untrusted input.
    root = ET.parse(path).getroot()  # noqa: S314
    out: dict[int, NmapPort] = {}
    for port in root.iter("port"):
        number = int(port.get("portid", "0"))
        if number not in protocols:
            continue
        protocol, implicit = protocols[number]
        svc = port.find("service")
        service = ""
        if svc is not None:
            service = " ".join(
                v for v in (svc.get("name"), svc.get("product"), svc.get("version")) if v
            )
        result = NmapPort(service, {}, [], {})
        if svc is not None and svc.get("version"):
            _add(result.reported, "BAN-01", "shown", f"-sV: {service}")
        for script in port.findall("script"):
            sid = script.get("id", "")
            text = script.get("output", "")
            result.scripts[sid] = text.strip()
            if sid in {"imap-capabilities", "pop3-capabilities", "smtp-commands"}:
                _cleartext_capabilities(
                    result.reported, result.unmapped, sid, text, protocol, implicit
                )
            elif sid == "ssl-enum-ciphers":
                _cipher_facts(result.reported, result.unmapped, script)
            elif sid == "ssl-cert":
                _certificate_facts(result.reported, script, now)
        if not {"ssl-enum-ciphers", "ssl-cert"} & set(result.scripts):
            result.unmapped.append("no TLS script ran (ssl-enum-ciphers, ssl-cert)")
        out[number] = result
    return out


# -- the report --------------------------------------------------------------------------


@dataclasses.dataclass
class PortResult:
    host: LabHost
    endpoint: LabEndpoint
    truth: frozenset[str]
    imapguard: Reported
    grade: str
    not_tested: list[str]
    nmap: NmapPort | None
    testssl: TestsslPort | None
    #: What the whole-lab imapguard scan said instead, when it differs.
    whole_lab_differs: str = ""

    def reported(self, tool: Tool) -> Reported | None:
        if tool == "imapguard":
            return self.imapguard
        if tool == "nmap":
            return self.nmap.reported if self.nmap else None
        return self.testssl.reported if self.testssl else None

    @property
    def label(self) -> str:
        mode = "implicit TLS" if self.endpoint.implicit_tls else "cleartext"
        return f"{self.host.kind} {self.endpoint.port} ({self.endpoint.protocol}, {mode})"


def _cell(results: list[PortResult], tool: Tool, cid: str) -> str:
    """How `tool` did on the ports where the lab really has `cid`."""
    having = [r for r in results if cid in r.truth]
    ran = [(r, rep) for r in having if (rep := r.reported(tool)) is not None]
    if not ran:
        return "not run"
    levels = [
        rep[cid][0]
        if cid in rep
        else "not tested"
        if tool == "imapguard" and cid in r.not_tested
        else "missed"
        for r, rep in ran
    ]
    counts = {lv: levels.count(lv) for lv in ("found", "aborted", "shown", "not tested", "missed")}
    parts = [f"{lv} {n}/{len(ran)}" for lv, n in counts.items() if n]
    return ", ".join(parts)


def _title(cid: str) -> str:
    check = CATALOG.get(cid)
    return check.title if check else cid


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    results: list[PortResult],
    runs: list[Run],
    info: dict[str, str],
    out_dir: Path,
) -> str:
    lines: list[str] = []
    w = lines.append
    w("# imapguard vs testssl vs nmap on the scanner lab")
    w("")
    for k, v in info.items():
        w(f"- {k}: {v}")
    w(f"- raw outputs: `{out_dir}`")
    w("")

    w("## Commands (one example of each)")
    w("")
    for tool in TOOLS:
        example = next((r for r in runs if r.tool == tool), None)
        if example:
            w(f"- {tool}: `{' '.join(example.command)}`")
    w("")

    w("## Wall time per target")
    w("")
    w("| target | open ports | imapguard (6 ports) | nmap (6 ports) | testssl (one port: time) |")
    w("|---|---|---|---|---|")
    kinds = list(dict.fromkeys(r.host.kind for r in results))
    for kind in [*kinds, "whole lab"]:
        by_tool = {tool: [r for r in runs if r.tool == tool and r.target == kind] for tool in TOOLS}
        open_ports = [str(r.endpoint.port) for r in results if r.host.kind == kind]
        ports = ",".join(open_ports) if open_ports else f"{len(results)} open"

        def fmt(rs: list[Run], per_port: bool = False) -> str:
            if not rs:
                return "--"
            bits = [
                (f"{r.ports[0]}: " if per_port else "")
                + f"{r.wall:.1f} s (CPU {r.cpu:.1f} s, load {r.load_before:.1f}"
                + (", **killed**" if r.returncode is None else "")
                + ")"
                for r in rs
            ]
            return "; ".join(bits)

        w(
            f"| {kind} | {ports} | {fmt(by_tool['imapguard'])} | {fmt(by_tool['nmap'])} "
            f"| {fmt(by_tool['testssl'], per_port=True)} |"
        )
    ts = [r for r in runs if r.tool == "testssl"]
    ig = [r for r in runs if r.tool == "imapguard" and r.target != "whole lab"]
    nm = [r for r in runs if r.tool == "nmap" and r.target != "whole lab"]
    if ts:
        per_port = sum(r.wall for r in ts) / len(ts)
        n_ports = len(results)
        w("")
        w(
            f"testssl: {len(ts)} ports took {sum(r.wall for r in ts):.0f} s "
            f"(mean {per_port:.1f} s per port); at that mean the lab's {n_ports} ports "
            f"would take about {per_port * n_ports / 60:.0f} min (estimate, not measured)."
        )
    if ig and nm:
        w(
            f"Sum over the targets, every port: imapguard {sum(r.wall for r in ig):.1f} s, "
            f"nmap {sum(r.wall for r in nm):.1f} s."
        )
    w("")

    w("## Side by side: the lab's problems and who reports them")
    w("")
    w(
        "Cells count the ports where the lab really has the problem and the tool scanned: "
        "`found` = named as a problem, `shown` = printed without a verdict, `aborted` = "
        "the scan stopped with an error pointing at it, `not tested` = imapguard says it "
        "could not check, `missed` = not reported."
    )
    w("")
    w("| ID | problem | ports with it | imapguard | testssl | nmap |")
    w("|---|---|---|---|---|---|")
    ids = sorted({cid for r in results for cid in r.truth}, key=_sort_key)
    for cid in ids:
        n = sum(cid in r.truth for r in results)
        cells = " | ".join(_cell(results, tool, cid) for tool in TOOLS)
        w(f"| {cid} | {_title(cid)} | {n} | {cells} |")
    w("")

    w("## Reported where the lab has no such problem")
    w("")
    any_extra = False
    for tool in TOOLS:
        extra: dict[str, list[str]] = {}
        for r in results:
            rep = r.reported(tool)
            for cid, (level, evidence) in (rep or {}).items():
                if cid not in r.truth:
                    extra.setdefault(f"{cid} ({level})", []).append(
                        f"{r.host.kind} {r.endpoint.port}: {evidence}"
                    )
        for key, where in sorted(extra.items()):
            any_extra = True
            w(f"- **{tool}** {key} on {len(where)} port(s): {_md_escape(where[0])[:300]}")
            for more in where[1:]:
                w(f"  - {_md_escape(more)[:200]}")
    if not any_extra:
        w("- none")
    w("")

    w("## testssl items without a catalog ID, and checks testssl could not run")
    w("")
    for r in results:
        if r.testssl is None:
            continue
        for line in r.testssl.unmapped:
            w(f"- {r.label}: unmapped `{_md_escape(line)[:200]}`")
        for line in r.testssl.failed_checks:
            w(f"- {r.label}: could not test `{_md_escape(line)[:200]}`")
    w("")

    differ = [r.label for r in results if r.whole_lab_differs]
    w(
        "imapguard over the whole lab in one run vs target by target: "
        + ("same IDs and grades on every port" if not differ else "differs on " + ", ".join(differ))
    )
    w("")
    w("## Did imapguard miss anything testssl or nmap reported?")
    w("")
    misses = []
    for r in results:
        for tool in TOOLS[1:]:
            rep = r.reported(tool)
            for cid, (level, evidence) in (rep or {}).items():
                if cid not in r.imapguard:
                    misses.append(
                        f"- {r.label}: {tool} {level} {cid} ({_md_escape(evidence)[:200]})"
                        + (" -- lab truth" if cid in r.truth else " -- not in the lab's truth")
                        + ("; imapguard: not tested" if cid in r.not_tested else "")
                    )
    w(
        "\n".join(misses)
        if misses
        else "- nothing: every ID they found or showed is imapguard's too"
    )
    w("")
    w("Imapguard misses against the lab's truth:")
    lost = [
        f"- {r.label}: {cid}" + (" (not tested)" if cid in r.not_tested else "")
        for r in results
        for cid in sorted(r.truth, key=_sort_key)
        if cid not in r.imapguard
    ]
    w("\n".join(lost) if lost else "- none")
    w("")

    w("## Per port")
    w("")
    for r in results:
        w(f"### {r.label} -- {r.endpoint.address}")
        w("")
        w(f"- lab truth: {', '.join(sorted(r.truth, key=_sort_key)) or 'nothing'}")
        nt = f"; not tested: {', '.join(r.not_tested)}" if r.not_tested else ""
        w(
            f"- imapguard (grade {r.grade}): "
            f"{', '.join(sorted(r.imapguard, key=_sort_key)) or 'nothing'}{nt}"
        )
        if r.testssl is None:
            w("- testssl: not run on this port")
        else:
            items = [
                f"{cid} {lv} ({_md_escape(ev)[:120]})"
                for cid, (lv, ev) in sorted(r.testssl.reported.items())
            ]
            w(f"- testssl (exit {r.testssl.rc}): {'; '.join(items) or 'nothing mapped'}")
        if r.whole_lab_differs:
            w(f"- imapguard over the whole lab said instead: {r.whole_lab_differs}")
        if r.nmap is None:
            w("- nmap: port not in the XML")
        else:
            items = [
                f"{cid} {lv} ({_md_escape(ev)[:120]})"
                for cid, (lv, ev) in sorted(r.nmap.reported.items())
            ]
            w(f"- nmap `{r.nmap.service}`: {'; '.join(items) or 'nothing'}")
            for note in r.nmap.unmapped:
                w(f"  - note: {note}")
            for sid, text in r.nmap.scripts.items():
                if sid.endswith(("capabilities", "commands")):
                    w(f"  - {sid}: `{_md_escape(text)[:200]}`")
        w("")
    return "\n".join(lines)


def _sort_key(cid: str) -> tuple[int, int]:
    families = ["EXP", "ST", "AUTH", "BAN", "TLS", "CERT"]
    family, _, number = cid.partition("-")
    return (families.index(family) if family in families else 99, int(number or 0))


# -- main ------------------------------------------------------------------------------


def _busy_ports(network: str) -> list[str]:
    """Listeners that would collide with the lab: on a wildcard address or inside the
    lab's network, on one of LAB_PORTS (``ss -ltnH``)."""
    done = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True)
    prefix = network.split("/")[0].rsplit(".", 1)[0] + "."
    busy = []
    for line in done.stdout.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        if int(port) in LAB_PORTS and (
            address in {"0.0.0.0", "*", "[::]"} or address.startswith(prefix)
        ):
            busy.append(local)
    return busy


def _versions() -> dict[str, str]:
    def first(cmd: list[str], pattern: str) -> str:
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        except OSError:
            return "?"
        m = re.search(pattern, text)
        return " ".join(m.group(0).split()) if m else "?"

    return {
        "testssl": first([str(TESTSSL), "--version"], r"testssl\s+\S+"),
        "nmap": first([str(NMAP), "--version"], r"Nmap version \S+"),
        "imapguard": imapguard.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.compare_scanners", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 targets, testssl on one port")
    ap.add_argument(
        "--testssl",
        choices=["subset", "all", "none"],
        default="subset",
        help="testssl on one port per target (default), on every port, or not at all",
    )
    ap.add_argument("--network", default="127.0.55.0/24", help="where the lab's addresses are")
    ap.add_argument("--out", type=Path, help="keep raw outputs here (default: new /tmp dir)")
    ap.add_argument("--markdown", type=Path, help="also write the Markdown to this file")
    args = ap.parse_args(argv)

    missing = [str(p) for p in (TESTSSL, NMAP, Path("/usr/sbin/dovecot")) if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)} (apt-get install testssl.sh nmap dovecot-imapd)")
    if os.geteuid() != 0:
        sys.exit("run as root (Dovecot switches users)")
    busy = _busy_ports(args.network)
    if busy:
        sys.exit(f"something already listens on the lab's ports: {', '.join(busy)}")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"signal {signum}"))

    kinds = QUICK_KINDS if args.quick else KINDS
    ts_ports = QUICK_TESTSSL_PORTS if args.quick else TESTSSL_PORTS
    out_dir: Path = args.out or Path(tempfile.mkdtemp(prefix="compare-scanners-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    lab_dir = Path(tempfile.mkdtemp(prefix="compare-lab-"))
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        **_versions(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    runs: list[Run] = []
    results: list[PortResult] = []
    try:
        with start_lab(kinds, lab_dir, network=args.network, standard_ports=True) as lab:
            print(
                "# lab: " + ", ".join(f"{h.address} {h.kind}" for h in lab.hosts),
                file=sys.stderr,
                flush=True,
            )
            results = _run_all(lab, ts_ports, args.testssl, out_dir, runs)
    finally:
        shutil.rmtree(lab_dir, ignore_errors=True)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(results, runs, info, out_dir)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


def _run_all(
    lab: Lab, ts_ports: dict[str, int], ts_mode: str, out_dir: Path, runs: list[Run]
) -> list[PortResult]:
    results: list[PortResult] = []
    for host in lab.hosts:
        tag = host.kind.replace(":", "-")
        # The six default ports on every target (closed ones cost a refused connect):
        # the implicit-TLS twin check (EXP-05) needs to see that 993/995 are closed.
        ports = list(LAB_PORTS)
        print(f"# {host.kind} ({host.address}): ports {ports}", file=sys.stderr, flush=True)
        ig_run = _imapguard(
            host.kind, [host.address], ports, lab.ca_cert, out_dir / f"{tag}.ig.json"
        )
        nm_run = _nmap(host.kind, [host.address], ports, out_dir / f"{tag}.nmap.xml")
        runs += [ig_run, nm_run]
        ig = read_imapguard(ig_run.output)
        protocols = {e.port: (e.protocol, e.implicit_tls) for e in host.endpoints}
        nm = read_nmap(nm_run.output, protocols) if nm_run.output.exists() else {}
        for endpoint in sorted(host.endpoints, key=lambda e: e.port):
            testssl: TestsslPort | None = None
            wanted = ts_mode == "all" or (
                ts_mode == "subset" and ts_ports.get(host.kind) == endpoint.port
            )
            if wanted:
                ts_out = out_dir / f"{tag}.{endpoint.port}.testssl.json"
                ts_out.unlink(missing_ok=True)  # testssl refuses to overwrite
                ts_run = _testssl(host.kind, endpoint, lab.ca_cert, ts_out)
                runs.append(ts_run)
                testssl = read_testssl(ts_out, ts_run, endpoint.implicit_tls)
                print(f"#   testssl {endpoint.port}: {ts_run.wall:.1f} s", file=sys.stderr)
            reported, grade, skipped = ig.get((endpoint.address, endpoint.port), ({}, "none", []))
            results.append(
                PortResult(
                    host,
                    endpoint,
                    TRUTH[host.kind][(endpoint.protocol, endpoint.implicit_tls)],
                    reported,
                    grade,
                    skipped,
                    nm.get(endpoint.port),
                    testssl,
                )
            )
    # The whole lab in one invocation each, as an administrator would scan a network.
    addresses = [h.address for h in lab.hosts]
    whole = _imapguard("whole lab", addresses, LAB_PORTS, lab.ca_cert, out_dir / "lab.ig.json")
    runs.append(whole)
    runs.append(_nmap("whole lab", addresses, LAB_PORTS, out_dir / "lab.nmap.xml"))
    # One scan of everything must say what the scans target by target said.
    together = read_imapguard(whole.output)
    for r in results:
        key = (r.endpoint.address, r.endpoint.port)
        ids, grade, _ = together.get(key, ({}, "none", []))
        if set(ids) != set(r.imapguard) or grade != r.grade:
            r.whole_lab_differs = f"{sorted(ids)} grade {grade}"
    return results


if __name__ == "__main__":
    sys.exit(main())
