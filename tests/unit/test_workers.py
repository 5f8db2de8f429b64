"""Sockets shared by workers, and the locks that stop a second `serve` from
joining a port or a state by mistake."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from imapguard.errors import ConfigError
from imapguard.workers import address_lock, bind_listeners, state_lock


def test_each_worker_gets_its_own_socket_on_one_port() -> None:
    (group,) = bind_listeners([("listen[0].address", ("127.0.0.1", 0))], 3)
    try:
        ports = {sock.getsockname()[1] for sock in group}
        assert len(group) == 3
        assert len(ports) == 1
        assert all(sock.get_inheritable() for sock in group)
        # The kernel hands a connection to one of them.
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=5):
            pass
    finally:
        for sock in group:
            sock.close()


def test_a_port_held_by_another_program_is_named_in_one_line() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            bind_listeners([("listen[1].address", ("127.0.0.1", port))], 2)
    assert caught.value.problems == [
        ("listen[1].address", f"cannot listen on 127.0.0.1:{port}: Address already in use")
    ]


def test_a_second_imapguard_cannot_join_the_same_address() -> None:
    address = f"127.0.0.1:{os.getpid()}-test"
    held = address_lock(address, "listen[0].address")
    assert held is not None
    try:
        with pytest.raises(ConfigError, match="served by another imapguard serve"):
            address_lock(address, "listen[0].address")
    finally:
        held.close()
    again = address_lock(address, "listen[0].address")  # free again once released
    assert again is not None
    again.close()


def test_a_second_serve_on_one_sqlite_state_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    with state_lock(url):
        with pytest.raises(ConfigError) as caught, state_lock(url):
            pass
        ((key, message),) = caught.value.problems
        assert key == "state.url"
        assert f"pid {os.getpid()}" in message
    with state_lock(url):  # released at the end of the first
        pass


def test_second_serve_on_the_same_state_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.db").touch()
    (tmp_path / "link.db").symlink_to(tmp_path / "data" / "state.db")
    (tmp_path / "linkdir").symlink_to(tmp_path / "data")
    with state_lock(f"sqlite:///{tmp_path}/data/state.db"):
        for alias in ("link.db", "linkdir/state.db", "data/./state.db", "linkdir/../data/state.db"):
            with pytest.raises(ConfigError) as caught, state_lock(f"sqlite:///{tmp_path}/{alias}"):
                pass
            assert f"pid {os.getpid()}" in caught.value.problems[0][1], alias


def test_a_shared_store_takes_no_lock(tmp_path: Path) -> None:
    with state_lock("postgresql://db/imapguard"), state_lock("postgresql://db/imapguard"):
        pass
