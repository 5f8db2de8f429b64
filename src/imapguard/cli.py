"""The `imapguard` console script.

Exit codes (SPEC "Commands"): 0 success, 1 the command ran and found a problem,
2 usage or configuration error, with a message naming the key or argument.
Records print as tables on a terminal, plain tab-separated lines on a pipe, or
one JSON document with `--json`.

Account names, labels, client IDs, addresses, reasons and audit fields are
stored or client-supplied text: they reach the terminal only through `_shown`
(control, format and bidi characters as escapes, so a name cannot move the
cursor or reorder a line, and a tab or line feed cannot forge a row) and, in
tables, as rich `Text` on a console without markup, so `[/x]` is printed
rather than parsed (a MarkupError there was a crash of `blocks list`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imapguard import __version__
from imapguard.audit import RedactingFilter, follow, read_events
from imapguard.config import Config, default_config_path, load_config
from imapguard.errors import ConfigError, ImapguardError, StateError

__all__ = ["main"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class _Usage(Exception):
    """A usage error found after argument parsing (exit 2)."""


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pymap logs whole protocol lines, credentials included, at DEBUG.
    logging.getLogger("pymap").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imapguard",
        description="A TLS-terminating IMAP gateway that demands a second factor.",
    )
    parser.add_argument("--version", action="version", version=f"imapguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            default=None,
            metavar="FILE",
            help="configuration file (default: $IMAPGUARD_CONFIG or ./imapguard.toml)",
        )

    def json_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON document")

    demo = sub.add_parser("demo", help="run an all-in-one local demo (no root, no packages)")
    demo.add_argument(
        "--state",
        default="./imapguard-demo",
        metavar="DIR",
        help="where the demo keeps its state (default: ./imapguard-demo)",
    )
    demo.add_argument(
        "--port-base",
        type=int,
        default=10000,
        metavar="N",
        help="ports N+143 (STARTTLS), N+993 (TLS), N+144 (backend); default 10000",
    )

    serve = sub.add_parser("serve", help="run the gateway")
    config_opt(serve)

    check = sub.add_parser("check-config", help="validate the configuration")
    config_opt(check)

    user = sub.add_parser("user", help="accounts known to the gateway")
    user_sub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = user_sub.add_parser("list", help="list accounts")
    config_opt(p)
    json_opt(p)
    p = user_sub.add_parser("show", help="one account, its factors and last login")
    p.add_argument("user")
    config_opt(p)
    json_opt(p)

    ap = sub.add_parser("app-password", help="device app passwords")
    ap_sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ap_sub.add_parser("create", help="create one; it is printed once and never stored")
    p.add_argument("user")
    p.add_argument("--label", required=True, help="the device, e.g. 'phone'")
    config_opt(p)
    json_opt(p)
    p = ap_sub.add_parser("list", help="list a user's app passwords")
    p.add_argument("user")
    config_opt(p)
    json_opt(p)
    p = ap_sub.add_parser("revoke", help="revoke one (new logins with it fail at once)")
    p.add_argument("user")
    p.add_argument("id")
    config_opt(p)
    json_opt(p)

    tp = sub.add_parser("totp", help="one-time codes (password + code)")
    tp_sub = tp.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = tp_sub.add_parser(
        "enroll", help="enroll a TOTP secret: prints the otpauth URI and a QR code"
    )
    p.add_argument("user")
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing secret (the user's authenticator app stops working)",
    )
    config_opt(p)
    json_opt(p)
    p = tp_sub.add_parser("remove", help="remove the account's TOTP secret")
    p.add_argument("user")
    config_opt(p)
    json_opt(p)

    dev = sub.add_parser("device", help="trusted and pending devices")
    dev_sub = dev.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dev_sub.add_parser("list", help="a user's devices")
    p.add_argument("user")
    config_opt(p)
    json_opt(p)
    p = dev_sub.add_parser("approve", help="trust a pending device ('yes, that was me')")
    p.add_argument("user")
    p.add_argument("id")
    config_opt(p)
    json_opt(p)
    p = dev_sub.add_parser("revoke", help="forget a device (it must prove a factor again)")
    p.add_argument("user")
    p.add_argument("id")
    config_opt(p)
    json_opt(p)

    p = user_sub.add_parser(
        "unlock", help="lift an account's lockout, its per-address blocks and its code lock"
    )
    p.add_argument("user")
    config_opt(p)
    json_opt(p)

    blk = sub.add_parser("blocks", help="current blocks (sources, networks, accounts, passwords)")
    blk_sub = blk.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = blk_sub.add_parser("list", help="every block in force, with its reason and expiry")
    config_opt(p)
    json_opt(p)
    p = blk_sub.add_parser(
        "clear", help="lift one block: an address, a network, or KIND:VALUE as listed"
    )
    p.add_argument("target")
    config_opt(p)
    json_opt(p)

    pol = sub.add_parser("policy", help="the zero-trust access policy")
    pol_sub = pol.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = pol_sub.add_parser(
        "explain", help="evaluate the policy for a login without logging in: decision and rule"
    )
    p.add_argument("--user", required=True, help="the account")
    p.add_argument("--ip", required=True, help="the client's address")
    p.add_argument("--method", help="auth method, e.g. password+totp, oauthbearer, client-cert")
    p.add_argument("--factor", help="the proven factor, e.g. password+totp, oauth-mfa")
    p.add_argument(
        "--cert-subject", metavar="S", help="the client presented a verified certificate (S)"
    )
    p.add_argument("--listener", help="the listener address, as in [[listen]].address")
    config_opt(p)
    json_opt(p)

    scan = sub.add_parser(
        "scan",
        help="audit IMAP/POP3/SMTP services: TLS, plaintext authentication, grades, fixes",
        description="Audit hosts, host:port, CIDR ranges or @file of targets (see the "
        "README's scanner section for the checks and the grade table).",
    )
    scan.add_argument("targets", nargs="+", metavar="TARGET")
    scan.add_argument(
        "--ports",
        default=None,
        metavar="LIST",
        help="ports to probe: '143,993' replaces the defaults (143,993,110,995,587,465), "
        "'+25' adds to them; ranges a-b allowed",
    )
    scan.add_argument(
        "--format", choices=("table", "json", "sarif", "html"), default="table", dest="fmt"
    )
    scan.add_argument("--output", "-o", type=Path, default=None, metavar="FILE")
    scan.add_argument(
        "--fail-on",
        default=None,
        metavar="GRADE",
        help="exit 1 when a service grades below GRADE (for CI)",
    )
    scan.add_argument("--concurrency", type=_positive_int, default=32, metavar="N")
    scan.add_argument(
        "--per-host",
        type=_positive_int,
        default=4,
        metavar="N",
        help="TLS-audit connections at once per address (the mail checks use one)",
    )
    scan.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S")
    scan.add_argument(
        "--rate", type=_positive_float, default=100.0, metavar="N", help="new connections/s"
    )
    scan.add_argument(
        "--ca-file", type=Path, default=None, metavar="FILE", help="a private CA to trust too"
    )
    scan.add_argument(
        "--server-name",
        default=None,
        metavar="NAME",
        help="the name certificates must match when a target is an address",
    )

    events = sub.add_parser("events", help="read the audit log")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument(
        "--file",
        default=None,
        metavar="PATH",
        help="audit log to read (default: audit.path of the configuration)",
    )
    config_opt(events)
    json_opt(events)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"config error: {_shown(key)}: {_shown(message)}", file=sys.stderr)
        return EXIT_USAGE
    except _Usage as exc:
        print(f"imapguard: error: {_shown(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as exc:
        print(f"imapguard: state store: {_shown(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except ImapguardError as exc:
        print(f"imapguard: {_shown(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace, *, check_files: bool = True) -> Config:
    return load_config(args.config or default_config_path(), check_files=check_files)


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from imapguard.demo import run_demo

        setup_logging()
        return run_demo(args.state, args.port_base)
    if command == "serve":
        from imapguard.gateway.server import run_gateway

        setup_logging()
        run_gateway(args.config or default_config_path())
        return EXIT_OK
    if command == "check-config":
        from imapguard.policy.gate import load_policy

        path = args.config or default_config_path()
        config = load_config(path)
        _, warnings = load_policy(config.policy, config.groups)
        for warning in [*warnings, *_config_warnings(config)]:
            print(f"warning: {_shown(warning)}", file=sys.stderr)
        print(f"{_shown(path)}: configuration is valid")
        return EXIT_OK
    if command == "user":
        return _user(args)
    if command == "app-password":
        return _app_password(args)
    if command == "policy":
        return _policy(args)
    if command == "blocks":
        return _blocks(args)
    if command == "totp":
        return _totp(args)
    if command == "device":
        return _device(args)
    if command == "events":
        return _events(args)
    if command == "scan":
        return _scan(args)
    raise _Usage(f"unknown command {command}")  # pragma: no cover - argparse refuses first


def _config_warnings(config: Config) -> list[str]:
    """Valid choices that weaken something, for check-config to point out."""
    from imapguard.tls import client_crl_problems

    warnings: list[str] = []
    if config.tls.client_crl is not None and config.tls.client_ca is not None:
        warnings += client_crl_problems(config.tls.client_crl, config.tls.client_ca)[1]
    if config.oauth is not None and config.oauth.trust_unverified_email:
        warnings.append(
            "oauth.trust_unverified_email: a token without email_verified logs in as the "
            "account its email claim names; if users can set their own address at the "
            'issuer, anyone can log in as anyone ("nOAuth"). Prefer an issuer that sends '
            "email_verified, or a username_claim that users cannot change themselves"
        )
    return warnings


# -- output -------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _shown(value: object) -> str:
    """`value` as text fit for a terminal line or a tab-separated cell: control,
    format (bidi, zero-width) and line/paragraph separator characters, tabs
    included, as `\\xNN` / `\\uNNNN` escapes."""
    out = []
    for char in str(value):
        if unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Text cells and a console without markup, emoji codes or highlighting:
        # what the store holds is shown as it is, never interpreted.
        table = Table(title=Text(_shown(title)))
        for column in columns:
            table.add_column(Text(column))
        for row in rows:
            table.add_row(*(Text(_shown(cell)) for cell in row))
        Console(markup=False, emoji=False, highlight=False).print(table)
    else:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(_shown(cell) for cell in row))


def _json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


# -- commands -----------------------------------------------------------------


def _store(config: Config) -> Any:
    from imapguard.state import open_store

    return open_store(config.state.url)


def _user_name(raw: str, config: Config) -> str:
    """The account, in the form the gateway keys it by ([auth] username rules)."""
    from imapguard.config import account_names

    user = account_names(config).canonical(raw.encode())
    if user is None:
        raise _Usage(f"invalid user name {raw!r} (see auth.username_chars, auth.realms)")
    return user


def _defense(config: Config) -> Any:
    from imapguard.defense.engine import Defense
    from imapguard.defense.fingerprints import Fingerprinter

    settings = config.defense
    root = _server_key(config)
    return Defense(
        settings,
        _store(config),
        fingerprints=Fingerprinter(root, epoch_seconds=settings.fingerprint_epoch),
    )


def _target(text: str) -> Any:
    """An address, a network, or KIND:VALUE (as `blocks list` prints it)."""
    import ipaddress

    from imapguard.defense.counters import Target, TargetKind

    try:
        return Target(TargetKind.SOURCE, str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
        return Target(TargetKind.NETWORK, str(network))
    except ValueError:
        pass
    try:
        return Target.parse(text)
    except ValueError as exc:
        raise _Usage(f"target: {exc}") from None


def _blocks(args: argparse.Namespace) -> int:
    config = _config(args, check_files=False)
    defense = _defense(config)
    if args.action == "list":
        blocks = defense.blocks()
        if args.json:
            _json(
                [
                    {
                        "target": str(b.target),
                        "kind": b.target.kind.value,
                        "value": b.target.value,
                        "reason": b.reason,
                        "level": b.level,
                        "created": b.created,
                        "expires": b.expires,
                    }
                    for b in blocks
                ]
            )
        else:
            _table(
                "Blocks",
                ("target", "reason", "level", "since", "until"),
                [
                    (str(b.target), b.reason, str(b.level), _when(b.created), _when(b.expires))
                    for b in blocks
                ],
            )
        return EXIT_OK
    target = _target(args.target)
    cleared = defense.clear(target)
    if args.json:
        _json({"target": str(target), "cleared": cleared})
    elif cleared:
        print(f"cleared {_shown(target)}")
    else:
        print(f"imapguard: no block on {_shown(target)}", file=sys.stderr)
    return EXIT_OK if cleared else EXIT_PROBLEM


def _user(args: argparse.Namespace) -> int:
    if args.action == "unlock":
        config = _config(args, check_files=False)
        name = _user_name(args.user, config)
        lifted = [str(t) for t in _defense(config).unlock(name)]
        codes = _store(config).clear_totp_lock(name)
        if args.json:
            _json({"user": name, "lifted": lifted, "totp_lock_cleared": codes})
        else:
            print(
                f"unlocked {_shown(name)}: "
                + (_shown(", ".join(lifted)) or "no blocks")
                + ("; one-time codes unlocked" if codes else "")
            )
        return EXIT_OK
    config = _config(args, check_files=False)
    store = _store(config)
    if args.action == "list":
        users = store.list_users()
        if args.json:
            _json([u.__dict__ for u in users])
        else:
            _table(
                "Accounts",
                ("user", "app passwords", "last login", "from", "method"),
                [
                    (
                        u.name,
                        str(u.app_passwords),
                        _when(u.last_login_at),
                        u.last_login_address or "-",
                        u.last_login_method or "-",
                    )
                    for u in users
                ],
            )
        return EXIT_OK
    name = _user_name(args.user, config)
    record = store.get_user(name)
    if record is None:
        print(f"imapguard: no such user: {_shown(name)}", file=sys.stderr)
        return EXIT_PROBLEM
    passwords = store.list_app_passwords(name)
    totp_record = store.get_totp(name)
    devices = store.list_devices(name)
    now = time.time()
    if args.json:
        _json(
            {
                **record.__dict__,
                "app_password_list": [p.__dict__ for p in passwords],
                "totp": None
                if totp_record is None
                else {
                    "enrolled_at": totp_record.created_at,
                    "locked_until": totp_record.locked_until,
                },
                "devices": [_device_json(d, now) for d in devices],
            }
        )
        return EXIT_OK
    print(f"user:        {_shown(record.name)}")
    print(f"known since: {_when(record.created_at)}")
    print(
        f"last login:  {_when(record.last_login_at)}"
        f" from {_shown(record.last_login_address or '-')}"
        f" ({_shown(record.last_login_method or '-')})"
    )
    totp_text = "no TOTP"
    if totp_record is not None:
        totp_text = f"TOTP since {_when(totp_record.created_at)}"
        if totp_record.locked_until is not None and totp_record.locked_until > now:
            totp_text += f" (codes locked until {_when(totp_record.locked_until)})"
    print(f"factors:     {len(passwords)} app password(s), {totp_text}")
    for p in passwords:
        print(
            f"  {_shown(p.id)}  {_shown(p.label)}  created {_when(p.created_at)}"
            f"  last used {_when(p.last_used_at)}"
        )
    trusted = sum(d.trusted_at(now) for d in devices)
    pending = sum(d.status == "pending" for d in devices)
    print(
        f"devices:     {trusted} trusted, {pending} pending (imapguard device list {_shown(name)})"
    )
    return EXIT_OK


def _app_password(args: argparse.Namespace) -> int:
    from imapguard.auth import app_passwords
    from imapguard.keys import APP_PASSWORD, derive_key, load_server_key

    config = _config(args, check_files=False)
    user = _user_name(args.user, config)
    store = _store(config)
    if args.action == "create":
        label = args.label.strip()
        if not label or len(label) > 64 or not label.isprintable():
            raise _Usage("--label must be 1 to 64 printable characters")
        try:
            root = load_server_key(config.state.key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError([("state.key_file", str(exc))]) from None
        password = app_passwords.generate()
        normalized = app_passwords.normalize(password)
        assert normalized is not None  # noqa: S101 - generate() makes valid ones
        digest = app_passwords.digest(derive_key(root, APP_PASSWORD), user, normalized)
        record = store.add_app_password(user, label, digest, time.time())
        if args.json:
            _json({"id": record.id, "label": record.label, "password": password.reveal().decode()})
        else:
            print(f"App password {_shown(record.id)} for {_shown(user)} ({_shown(label)}):\n")
            print(f"    {password.reveal().decode()}\n")
            print("It is shown this once. Type it into the device's mail account as its password.")
        return EXIT_OK
    if args.action == "list":
        records = store.list_app_passwords(user)
        if args.json:
            _json([r.__dict__ for r in records])
        else:
            _table(
                f"App passwords of {user}",
                ("id", "label", "created", "last used", "from", "client"),
                [
                    (
                        r.id,
                        r.label,
                        _when(r.created_at),
                        _when(r.last_used_at),
                        r.last_used_address or "-",
                        r.last_used_client or "-",
                    )
                    for r in records
                ],
            )
        return EXIT_OK
    revoked = store.revoke_app_password(user, args.id)
    if args.json:
        _json({"id": args.id, "revoked": revoked})
    elif revoked:
        print(f"revoked app password {_shown(args.id)} of {_shown(user)}")
    else:
        print(f"imapguard: {_shown(user)} has no app password {_shown(args.id)}", file=sys.stderr)
    return EXIT_OK if revoked else EXIT_PROBLEM


def _policy(args: argparse.Namespace) -> int:
    import ipaddress

    from imapguard.policy.gate import load_policy

    config = _config(args, check_files=False)
    user = _user_name(args.user, config)
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise _Usage(f"--ip: not an IP address: {args.ip!r}") from None
    gate, warnings = load_policy(config.policy, config.groups)
    for warning in warnings:
        print(f"warning: {_shown(warning)}", file=sys.stderr)
    request = gate.request(
        user,
        args.ip,
        method=args.method,
        factor=args.factor,
        listener=args.listener,
        client_cert=args.cert_subject is not None,
    )
    explanation = gate.explain(request)
    if args.json:
        _json(explanation.to_dict())
    else:
        for line in explanation.explanation_lines():
            print(_shown(line))
    return EXIT_OK


def _server_key(config: Config) -> Any:
    from imapguard.keys import load_server_key

    try:
        return load_server_key(config.state.key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError([("state.key_file", str(exc))]) from None


def _totp(args: argparse.Namespace) -> int:
    from imapguard.auth import totp
    from imapguard.keys import TOTP_SEAL, derive_key

    config = _config(args, check_files=False)
    user = _user_name(args.user, config)
    store = _store(config)
    if args.action == "remove":
        removed = store.remove_totp(user)
        if args.json:
            _json({"user": user, "removed": removed})
        elif removed:
            print(f"removed the TOTP secret of {_shown(user)}")
        else:
            print(f"imapguard: {_shown(user)} has no TOTP secret", file=sys.stderr)
        return EXIT_OK if removed else EXIT_PROBLEM
    if store.get_totp(user) is not None and not args.replace:
        print(
            f"imapguard: {_shown(user)} already has a TOTP secret; --replace makes a new one "
            "(the old authenticator entry stops working)",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    key = derive_key(_server_key(config), TOTP_SEAL)
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, user, config.auth.totp_issuer)
    store.set_totp(user, totp.seal(key, user, secret), time.time())
    if args.json:
        _json({"uri": uri, "secret": secret.reveal().decode()})
        return EXIT_OK
    print(f"TOTP secret enrolled for {_shown(user)}. Scan this with an authenticator app:\n")
    print(totp.qr_text(uri))
    print(f"or enter the secret by hand: {secret.reveal().decode()}\n")
    print(f"URI: {uri}\n")
    print("Log in with the password followed by the 6-digit code, e.g. 'password123456'.")
    print("It is shown this once; the stored copy is encrypted.")
    return EXIT_OK


def _device_json(device: Any, now: float) -> dict[str, Any]:
    """A device record for --json: never its secret (the keyed digest of its code);
    `bound_to` says what the trust is bound to ("code", or the approved address)."""
    fields = {k: v for k, v in device.__dict__.items() if k != "secret"}
    bound = "code" if device.secret is not None else device.bound_address
    return {**fields, "trusted": device.trusted_at(now), "bound_to": bound}


def _device(args: argparse.Namespace) -> int:
    config = _config(args, check_files=False)
    user = _user_name(args.user, config)
    store = _store(config)
    now = time.time()
    if args.action == "list":
        devices = store.list_devices(user)
        if args.json:
            _json([_device_json(d, now) for d in devices])
        else:
            _table(
                f"Devices of {user}",
                ("id", "status", "network", "client", "trusted until", "last seen", "from"),
                [
                    (
                        d.id,
                        "trusted"
                        if d.trusted_at(now)
                        else d.status
                        if d.status == "pending"
                        else "expired",
                        d.network,
                        f"{d.client_name} {d.client_version}".strip() or "-",
                        _when(d.trusted_until),
                        _when(d.last_seen_at),
                        d.last_address or "-",
                    )
                    for d in devices
                ],
            )
        return EXIT_OK
    if args.action == "approve":
        # Trusted for the exact address and client the login came from, for a
        # shorter time than a device that proved a code (it proved nothing).
        until = now + config.auth.approved_device_days * 86400.0
        device = store.get_device(user, args.id)
        done = store.approve_device(user, args.id, until)
        verb = "approved"
        if done and device is not None and not args.json:
            client = f"{device.client_name} {device.client_version}".strip() or "no client ID"
            print(
                f"device {_shown(args.id)} of {_shown(user)}: login from"
                f" {_shown(device.last_address)} ({_shown(client)}),"
                f" trusted at that address only until {_when(until)}"
            )
    else:
        done = store.revoke_device(user, args.id)
        verb = "revoked"
    if args.json:
        _json({"id": args.id, verb: done})
    elif done:
        print(f"{verb} device {_shown(args.id)} of {_shown(user)}")
    else:
        print(f"imapguard: {_shown(user)} has no device {_shown(args.id)}", file=sys.stderr)
    return EXIT_OK if done else EXIT_PROBLEM


_EVENT_KEYS = (
    "user",
    "src",
    "result",
    "reason",
    "rule",
    "delay",
    "target",
    "by",
    "accounts",
    "before",
    "after",
    "would",
    "enforced",
    "method",
    "factor",
    "device",
    "mechanism",
    "client_id",
    "version",
    "cipher",
    "tls_mode",
    "listener",
    "duration",
    "bytes_in",
    "bytes_out",
    "count",
    "discarded_bytes",
)


def _format_event(record: dict[str, Any]) -> str:
    ts = record.get("ts")
    when = _when(ts) if isinstance(ts, int | float) else "?"
    parts = [when, _shown(record.get("event", "?")).ljust(10), _shown(record.get("session", "-"))]
    for key in _EVENT_KEYS:
        if key in record:
            parts.append(f"{key}={_shown(record[key])}")
    return "  ".join(parts)


def _events(args: argparse.Namespace) -> int:
    path = args.file or _config(args, check_files=False).audit.path
    if path == "-":
        raise _Usage("audit.path is standard output; pass --file")
    try:
        if args.follow:
            for record in follow(path):
                print(json.dumps(record) if args.json else _format_event(record), flush=True)
            return EXIT_OK
        records = list(read_events(path))
    except FileNotFoundError:
        print(f"imapguard: no audit log at {_shown(path)}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        _json(records)
    else:
        for record in records:
            print(_format_event(record))
    return EXIT_OK


def _scan(args: argparse.Namespace) -> int:
    import asyncio
    import warnings

    from imapguard.scanner.grade import GRADES
    from imapguard.scanner.report import progress, render
    from imapguard.scanner.run import ScanOptions, scan
    from imapguard.scanner.targets import TargetError, parse_ports

    fail_on = None
    if args.fail_on is not None:
        fail_on = args.fail_on.strip().upper()
        if fail_on not in GRADES:
            raise _Usage(f"--fail-on: {args.fail_on!r} is not a grade ({', '.join(GRADES)})")
    if args.ca_file is not None:
        from imapguard.scanner.tlsaudit import load_ca_file

        try:
            load_ca_file(args.ca_file)
        except (OSError, ValueError) as exc:
            raise _Usage(str(exc)) from None
    try:
        options = ScanOptions(
            ports=parse_ports(args.ports),
            concurrency=args.concurrency,
            per_host=args.per_host,
            timeout=args.timeout,
            rate=args.rate,
            ca_file=args.ca_file,
            server_name=args.server_name,
        )
    except TargetError as exc:
        raise _Usage(str(exc)) from None
    # A progress bar on a terminal (stderr), nothing on a pipe.
    with progress(0, enabled=sys.stderr.isatty()) as bar, warnings.catch_warnings():
        # sslyze's bundled trust store has a certificate with a negative serial.
        warnings.simplefilter("ignore")
        try:
            report = asyncio.run(
                scan(args.targets, options, on_total=bar.set_total, advance=bar.advance)
            )
        except TargetError as exc:
            raise _Usage(str(exc)) from None
    to_file = args.output is not None
    text = render(report, args.fmt, color=not to_file and sys.stdout.isatty())
    if to_file:
        args.output.write_text(text, encoding="utf-8")
        print(f"imapguard: report written to {_shown(args.output)}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if fail_on is not None:
        bar_rank = GRADES.index(fail_on)
        below = [s for s in report.services if GRADES.index(s.grade) > bar_rank]
        # A service that could not be fully tested has not shown that it meets the bar.
        unproven = [s for s in report.services if s not in below and not s.complete]
        if below:
            names = ", ".join(f"{s.name} {s.grade}" for s in below)
            print(f"imapguard: below {fail_on}: {_shown(names)}", file=sys.stderr)
        if unproven:
            names = ", ".join(s.name for s in unproven)
            print(
                f"imapguard: not fully tested, so not shown to meet {fail_on}: {_shown(names)}",
                file=sys.stderr,
            )
        if below or unproven:
            return EXIT_PROBLEM
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
