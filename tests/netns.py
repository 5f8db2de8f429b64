"""A throw-away Linux network namespace for tests that need many source addresses.

Usage::

    with NetNamespace.create() as ns:
        proc = subprocess.Popen([*ns.exec_prefix(), "some", "server"])  # runs inside
        socks = ns.tcp_sockets(5000, socket.AF_INET6)  # created inside, used from here
        ...

Inside, `lo` is up and `PREFIX` (an IPv6 /48 of the fd00::/8 unique-local range,
RFC 4193) is routed to it as local: a socket with IP_FREEBIND binds any address of
it and reaches a listener on ::1 there, so one test has 2^80 source addresses and
touches nothing outside the namespace. A socket belongs to the namespace it was
created in, whichever thread uses it later: `tcp_sockets()` creates them in a thread
that entered the namespace (setns(2) moves only the calling thread), so the test's
own threads never leave the host's namespace. The namespace is deleted on the way
out, also on failure; a process still inside is killed first.

Needs root and iproute2 (the CI runs as root on Debian 12).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["IP_FREEBIND", "PREFIX", "NetNamespace"]

#: Routed to `lo` inside every test namespace.
PREFIX = "fd00:1::/48"
#: linux/in.h; also honoured by AF_INET6 sockets (SOL_IP level) since Linux 4.15.
IP_FREEBIND = 15
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetNamespace:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[NetNamespace]:
        ns = cls(f"imapguard-test-{os.getpid()}-{threading.get_ident() % 10000}")
        _ip("netns", "add", ns.name)
        try:
            ns.run("ip", "link", "set", "lo", "up")
            ns.run("ip", "-6", "route", "add", "local", PREFIX, "dev", "lo")
            yield ns
        finally:
            ns._kill_all()
            _ip("netns", "delete", ns.name)

    def exec_prefix(self) -> list[str]:
        """Prepend to a command line to run it inside."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str) -> None:
        subprocess.run([*self.exec_prefix(), *args], check=True, capture_output=True, timeout=30)

    def call(self, function: Callable[[], T]) -> T:
        """`function()` in a thread that entered the namespace (sockets it creates
        stay in it)."""
        result: list[T] = []
        errors: list[BaseException] = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.name}", "rb") as f:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                result.append(function())
            except BaseException as exc:  # handed to the caller
                errors.append(exc)

        thread = threading.Thread(target=inside, name=f"netns {self.name}")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def tcp_socket(self, family: int = socket.AF_INET6) -> socket.socket:
        return self.tcp_sockets(1, family)[0]

    def tcp_sockets(self, count: int, family: int = socket.AF_INET6) -> list[socket.socket]:
        """`count` TCP sockets created inside, with IP_FREEBIND set."""

        def make() -> list[socket.socket]:
            socks = []
            try:
                for _ in range(count):
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    socks.append(sock)
                    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            except BaseException:
                for sock in socks:
                    sock.close()
                raise
            return socks

        return self.call(make)

    def _kill_all(self) -> None:
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        for pid in out.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
