"""/proc readings and the nginx mail proxy the gateway is compared with."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NGINX_BINARY",
    "NGINX_MAIL_MODULE",
    "NginxMailProxy",
    "children",
    "count_processes",
    "cpu_seconds",
    "group_cpu_seconds",
    "groups_cpu_seconds",
    "machine_busy_seconds",
    "memory_kib",
    "raise_nofile",
    "self_cpu_seconds",
    "tree_cpu_seconds",
    "tree_memory_kib",
    "tree_pids",
]

NGINX_BINARY = Path("/usr/sbin/nginx")
NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds spent by all cores outside idle and iowait since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / _TICK


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    return pss, rss


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text(encoding="ascii")
                out.extend(int(c) for c in text.split())
    return out


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (those alive now)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def tree_memory_kib(pid: int) -> tuple[int, int, int]:
    """(PSS, RSS, number of processes) summed over `pid` and its descendants: the
    memory of a server whatever it forks (workers, helper processes). A process
    that exits between the listing and the reading counts for nothing."""
    pss = rss = n = 0
    for p in tree_pids(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            one = memory_kib(p)
            pss, rss, n = pss + one[0], rss + one[1], n + 1
    return pss, rss, n


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its descendants alive now (utime + stime of each, and
    cutime + cstime: children it reaped): a server whatever it forks (workers, helper
    processes). Read before and after a measurement with the same server running, the
    difference is what its processes used meanwhile."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += sum(int(x) for x in _stat_fields(p)[11:15])
    return total / _TICK


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of process group `pgid`: utime + stime of its live processes plus
    cutime + cstime (children that exited and were reaped, e.g. Dovecot's per-login
    `imap` processes, are accounted to their parent)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except OSError:
            continue
        if len(fields) > 14 and int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


def groups_cpu_seconds(pgids: set[int]) -> float:
    """`group_cpu_seconds` summed over several process groups, in one /proc scan."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except OSError:
            continue
        if len(fields) > 14 and int(fields[2]) in pgids:
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


def count_processes(pgid: int, comm: str) -> int:
    """Live processes named `comm` in process group `pgid`."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path("/proc", entry, "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        name = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2 :].split()
        if name == comm and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            n += 1
    return n


def raise_nofile(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass(kw_only=True, eq=False)
class NginxMailProxy:
    """nginx's mail proxy: `workers` worker processes (default 1), implicit TLS,
    `auth_http` answered by itself.

    The auth endpoint is an nginx `location` on a loopback port that answers every
    request with Auth-Status OK and the upstream's plain port, so nginx logs in to
    the upstream with the client's own user name and password (research §3)."""

    prefix: Path
    port: int
    auth_port: int
    upstream_port: int
    certificate: Path
    private_key: Path
    workers: int = 1
    # Per worker; each proxied session takes two (client and upstream).
    connections: int = 10000
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.prefix / "nginx.conf"

    def write_config(self) -> None:
        p = self.prefix
        for sub in ("logs", "tmp"):
            (p / sub).mkdir(parents=True, exist_ok=True)
        temp = " ".join(
            f"{kind}_temp_path {p}/tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.config_path.write_text(
            f"""load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
user nobody nogroup;
worker_processes {self.workers};
worker_rlimit_nofile {max(20000, self.connections * 2 + 100)};
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections {self.connections}; }}
http {{
  access_log off;
  {temp}
  server {{
    listen 127.0.0.1:{self.auth_port};
    location = /auth {{
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port {self.upstream_port};
      return 204;
    }}
  }}
}}
mail {{
  server_name localhost;
  auth_http 127.0.0.1:{self.auth_port}/auth;
  proxy_pass_error_message on;
  ssl_certificate {self.certificate};
  ssl_certificate_key {self.private_key};
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:MAIL:10m;
  imap_capabilities IMAP4rev1 IDLE LITERAL+;
  server {{ listen 127.0.0.1:{self.port} ssl; protocol imap; }}
}}
"""
        )

    def _command(self, *extra: str) -> list[str]:
        return [
            str(NGINX_BINARY),
            "-p",
            f"{self.prefix}/",
            "-e",
            f"{self.prefix}/logs/error.log",
            "-c",
            str(self.config_path),
            *extra,
        ]

    def start(self, timeout: float = 10.0) -> None:
        check = subprocess.run(self._command("-t"), capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        with (self.prefix / "logs" / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log_text()}")
            if (
                _accepts(self.port)
                and _accepts(self.auth_port)
                and len(self.worker_pids()) == self.workers
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: {self.log_text()}")

    def worker_pid(self) -> int | None:
        if self.proc is None:
            return None
        kids = children(self.proc.pid)
        return kids[0] if len(kids) == 1 else None

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc is not None else []

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # The worker is in the master's process group; make sure it is gone too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return (self.prefix / "logs" / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
