"""The files a configuration names: present, readable, regular, and private
when they hold a secret; certificates and keys PEM, each key matching its
certificate (imapguard.tls). `check-config` runs these; `load_config` too,
unless told not to (tests, `docs/example.toml`), so `serve` refuses what
OpenSSL would refuse later, naming the key. `file_warnings` is what may run but
deserves a look (a certificate expired or about to): `check-config` prints it,
`serve` logs it at start and on each reload."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from imapguard.config.gateway import proxy_warnings
from imapguard.config.notify import MIN_WEBHOOK_SECRET

if TYPE_CHECKING:
    from imapguard.config.load import Config

__all__ = ["check_file", "file_problems", "file_warnings"]


def file_problems(config: Config) -> list[tuple[str, str]]:
    """Every problem with a file the configuration names, keyed by its key."""
    problems: list[tuple[str, str]] = []
    add = problems.append
    up = config.upstream
    check_file(problems, "tls.certificate", config.tls.certificate)
    check_file(problems, "tls.private_key", config.tls.private_key, secret=True)
    _check_pair(problems, "tls", config.tls.certificate, config.tls.private_key)
    check_file(problems, "state.key_file", config.state.key_file, secret=True, min_size=32)
    if up.ca is not None:
        check_file(problems, "upstream.ca", up.ca)
        _check_ca(problems, "upstream.ca", up.ca)
    if up.login == "master" and up.master_password_file:
        check_file(problems, "upstream.master_password_file", up.master_password_file, secret=True)
    if config.state.password_file is not None:
        check_file(problems, "state.password_file", config.state.password_file, secret=True)
    if config.state.postgresql:
        from urllib.parse import parse_qsl, urlsplit

        params = dict(parse_qsl(urlsplit(config.state.url).query))
        for name in ("sslrootcert", "sslcert"):
            if name in params:
                check_file(problems, "state.url", params[name])
        if "sslkey" in params:
            check_file(problems, "state.url", params["sslkey"], secret=True)
    if config.state.url.startswith("sqlite:///"):
        parent = Path(config.state.url.removeprefix("sqlite://")).parent
        if not parent.is_dir():
            add(("state.url", f"directory {parent} does not exist"))
        _check_private_state(problems, config.state.url.removeprefix("sqlite://"))
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        path = getattr(config.state, f"counters_{key}")
        if path is not None:
            secret = key in ("password_file", "key_file")
            check_file(problems, f"state.counters_{key}", path, secret=secret)
    if config.tls.client_ca is not None:
        check_file(problems, "tls.client_ca", config.tls.client_ca)
        _check_ca(problems, "tls.client_ca", config.tls.client_ca)
    if config.tls.client_crl is not None and config.tls.client_ca is not None:
        from imapguard.tls import client_crl_problems

        bad, _ = client_crl_problems(config.tls.client_crl, config.tls.client_ca)
        problems.extend(("tls.client_crl", message) for message in bad)
    if config.oauth is not None and config.oauth.ca_file is not None:
        check_file(problems, "oauth.ca_file", config.oauth.ca_file)
    notify = config.notify
    if notify is not None:
        if notify.webhook_secret_file is not None:
            check_file(
                problems,
                "notify.webhook_secret_file",
                notify.webhook_secret_file,
                secret=True,
                min_size=MIN_WEBHOOK_SECRET,
            )
        if notify.smtp_password_file is not None:
            check_file(
                problems, "notify.smtp_password_file", notify.smtp_password_file, secret=True
            )
        for key in ("webhook_ca_file", "smtp_ca_file"):
            value = getattr(notify, key)
            if value is not None:
                check_file(problems, f"notify.{key}", value)
    if config.groups is not None and config.groups.groups_file is not None:
        check_file(problems, "groups.groups_file", config.groups.groups_file)
    portal = config.portal
    if portal is not None and portal.certificate is not None:
        check_file(problems, "portal.certificate", portal.certificate)
    if portal is not None and portal.private_key is not None:
        check_file(problems, "portal.private_key", portal.private_key, secret=True)
    if portal is not None and (portal.certificate or portal.private_key):
        certificate = portal.certificate or config.tls.certificate
        _check_pair(problems, "portal", certificate, portal.private_key or config.tls.private_key)
    if portal is not None and portal.oidc_client_secret_file is not None:
        check_file(
            problems, "portal.oidc_client_secret_file", portal.oidc_client_secret_file, secret=True
        )
    if config.audit.path != "-":
        parent = Path(config.audit.path).parent
        if not parent.is_dir():
            add(("audit.path", f"directory {parent} does not exist"))
    return problems


def file_warnings(config: Config) -> list[str]:
    """Files that work today but not for long: the listeners' certificates
    expired, not valid yet, or expiring within tls.EXPIRY_WARNING_DAYS; and
    listeners that trust a wide range of proxies (`proxy_warnings`)."""
    from imapguard.tls import expiry_warning

    named = [("tls.certificate", config.tls.certificate)]
    if config.portal is not None and config.portal.certificate is not None:
        named.append(("portal.certificate", config.portal.certificate))
    warnings: list[str] = []
    for key, path in named:
        warning = expiry_warning(path)
        if warning is not None:
            warnings.append(f"{key}: {warning}")
    return warnings + proxy_warnings(config.listen)


def _check_pair(
    problems: list[tuple[str, str]], section: str, certificate: str, private_key: str
) -> None:
    """A certificate and its key, when both files are there to read (a missing
    one is already reported)."""
    from imapguard.tls import server_pair_problems

    keys = {f"{section}.certificate", f"{section}.private_key"}
    if any(key in keys for key, _ in problems):
        return
    for which, message in server_pair_problems(certificate, private_key).items():
        problems.append((f"{section}.{which}", message))


def _check_ca(problems: list[tuple[str, str]], key: str, path: str) -> None:
    from imapguard.tls import ca_file_problem

    if any(k == key for k, _ in problems):
        return
    problem = ca_file_problem(path)
    if problem is not None:
        problems.append((key, problem))


def _check_private_state(problems: list[tuple[str, str]], path: str) -> None:
    """The state database (and its -wal and -shm files, which share its mode) holds
    account names, addresses, devices and keyed password digests: no one but the
    gateway's user may read it. `open_store` creates it 0600; one made by an older
    version, or copied, may be 0644. In a directory that only its owner may enter
    (as `imapguard demo` makes its own) the files are out of others' reach."""
    try:
        if not os.stat(Path(path).parent).st_mode & (stat.S_IXGRP | stat.S_IXOTH):
            return
    except OSError:
        return  # the directory check above reports a missing directory
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(("state.url", f"cannot stat {name}: {exc.strerror}"))
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(
                ("state.url", f"{name} is readable or writable by group or others: chmod 600")
            )


def check_file(
    problems: list[tuple[str, str]], key: str, path: str, *, secret: bool = False, min_size: int = 1
) -> None:
    """Append why the file at `path` (the value of `key`) cannot be used, if it cannot."""
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            size = len(f.read(min_size))
    except FileNotFoundError:
        problems.append((key, f"file not found: {path}"))
        return
    except OSError as exc:
        problems.append((key, f"cannot read {path}: {exc.strerror}"))
        return
    if not stat.S_ISREG(info.st_mode):
        problems.append((key, f"not a regular file: {path}"))
    elif size < min_size:
        problems.append((key, f"{path} must hold at least {min_size} bytes"))
    elif secret and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        problems.append((key, f"{path} is readable or writable by others: chmod 600 (or 640)"))
