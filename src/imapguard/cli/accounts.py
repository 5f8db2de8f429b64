"""Account administration: `user`, `app-password`, `totp` and `device`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from imapguard.cli import invites
from imapguard.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Subparsers,
    UsageError,
    config_opt,
    json_opt,
    keys,
    load,
    open_defense,
    open_store,
    user_name,
)
from imapguard.cli.output import print_json, shown, table, when

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Subparsers) -> None:
    user = sub.add_parser("user", help="accounts known to the gateway")
    user_sub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = user_sub.add_parser("list", help="list accounts")
    config_opt(p)
    json_opt(p)
    p = user_sub.add_parser("show", help="one account, its factors and last login")
    p.add_argument("user")
    config_opt(p)
    json_opt(p)
    p = user_sub.add_parser(
        "unlock", help="lift an account's lockout, its per-address blocks and its code lock"
    )
    p.add_argument("user")
    config_opt(p)
    json_opt(p)
    invites.add_user_parsers(user_sub)

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


# -- user ---------------------------------------------------------------------


def _user(args: argparse.Namespace) -> int:
    if args.action == "unlock":
        return _unlock(args)
    if args.action == "invite":
        return invites.invite(args)
    if args.action == "revoke":
        return invites.revoke(args)
    config = load(args, check_files=False)
    store = open_store(config)
    if args.action == "list":
        users = store.list_users()
        if args.json:
            print_json([u.__dict__ for u in users])
        else:
            table(
                "Accounts",
                ("user", "app passwords", "last login", "from", "method"),
                [
                    (
                        u.name,
                        str(u.app_passwords),
                        when(u.last_login_at),
                        u.last_login_address or "-",
                        u.last_login_method or "-",
                    )
                    for u in users
                ],
            )
        return EXIT_OK
    name = user_name(args.user, config)
    record = store.get_user(name)
    if record is None:
        print(f"imapguard: no such user: {shown(name)}", file=sys.stderr)
        return EXIT_PROBLEM
    passwords = store.list_app_passwords(name)
    totp_record = store.get_totp(name)
    devices = store.list_devices(name)
    now = time.time()
    if args.json:
        print_json(
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
    print(f"user:        {shown(record.name)}")
    print(f"known since: {when(record.created_at)}")
    print(
        f"last login:  {when(record.last_login_at)}"
        f" from {shown(record.last_login_address or '-')}"
        f" ({shown(record.last_login_method or '-')})"
    )
    totp_text = "no TOTP"
    if totp_record is not None:
        totp_text = f"TOTP since {when(totp_record.created_at)}"
        if totp_record.locked_until is not None and totp_record.locked_until > now:
            totp_text += f" (codes locked until {when(totp_record.locked_until)})"
    print(f"factors:     {len(passwords)} app password(s), {totp_text}")
    for p in passwords:
        print(
            f"  {shown(p.id)}  {shown(p.label)}  created {when(p.created_at)}"
            f"  last used {when(p.last_used_at)}"
        )
    trusted = sum(d.trusted_at(now) for d in devices)
    pending = sum(d.status == "pending" for d in devices)
    print(
        f"devices:     {trusted} trusted, {pending} pending (imapguard device list {shown(name)})"
    )
    return EXIT_OK


def _unlock(args: argparse.Namespace) -> int:
    """The defense's blocks of the account and its one-time-code lock."""
    config = load(args, check_files=False)
    name = user_name(args.user, config)
    lifted = [str(t) for t in open_defense(config).unlock(name)]
    codes = open_store(config).clear_totp_lock(name)
    if args.json:
        print_json({"user": name, "lifted": lifted, "totp_lock_cleared": codes})
    else:
        print(
            f"unlocked {shown(name)}: "
            + (shown(", ".join(lifted)) or "no blocks")
            + ("; one-time codes unlocked" if codes else "")
        )
    return EXIT_OK


# -- app-password -------------------------------------------------------------


def _app_password(args: argparse.Namespace) -> int:
    from imapguard.auth import app_passwords

    config = load(args, check_files=False)
    user = user_name(args.user, config)
    store = open_store(config)
    if args.action == "create":
        label = args.label.strip()
        if app_passwords.label_problem(label) is not None:
            raise UsageError(f"--label must be 1 to {app_passwords.MAX_LABEL} printable characters")
        key = keys(config).app_password
        record, password = app_passwords.create(store, key, user, label, time.time())
        if args.json:
            print_json(
                {"id": record.id, "label": record.label, "password": password.reveal().decode()}
            )
        else:
            print(f"App password {shown(record.id)} for {shown(user)} ({shown(label)}):\n")
            print(f"    {password.reveal().decode()}\n")
            print("It is shown this once. Type it into the device's mail account as its password.")
        return EXIT_OK
    if args.action == "list":
        records = store.list_app_passwords(user)
        if args.json:
            print_json([r.__dict__ for r in records])
        else:
            table(
                f"App passwords of {user}",
                ("id", "label", "created", "last used", "from", "client"),
                [
                    (
                        r.id,
                        r.label,
                        when(r.created_at),
                        when(r.last_used_at),
                        r.last_used_address or "-",
                        r.last_used_client or "-",
                    )
                    for r in records
                ],
            )
        return EXIT_OK
    # Removed and published in one step: a gateway running in another process
    # ends the sessions that logged in with it within seconds.
    revoked = store.revoke(user, f"app-password:{args.id}", time.time())
    if args.json:
        print_json({"id": args.id, "revoked": revoked})
    elif revoked:
        print(f"revoked app password {shown(args.id)} of {shown(user)}")
    else:
        print(f"imapguard: {shown(user)} has no app password {shown(args.id)}", file=sys.stderr)
    return EXIT_OK if revoked else EXIT_PROBLEM


# -- totp ---------------------------------------------------------------------


def _totp(args: argparse.Namespace) -> int:
    from imapguard.auth import totp

    config = load(args, check_files=False)
    user = user_name(args.user, config)
    store = open_store(config)
    if args.action == "remove":
        removed = store.remove_totp(user)
        if args.json:
            print_json({"user": user, "removed": removed})
        elif removed:
            print(f"removed the TOTP secret of {shown(user)}")
        else:
            print(f"imapguard: {shown(user)} has no TOTP secret", file=sys.stderr)
        return EXIT_OK if removed else EXIT_PROBLEM
    if store.get_totp(user) is not None and not args.replace:
        print(
            f"imapguard: {shown(user)} already has a TOTP secret; --replace makes a new one "
            "(the old authenticator entry stops working)",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    key = keys(config).totp_seal
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, user, config.auth.totp_issuer)
    store.set_totp(user, totp.seal(key, user, secret), time.time())
    if args.json:
        print_json({"uri": uri, "secret": secret.reveal().decode()})
        return EXIT_OK
    print(f"TOTP secret enrolled for {shown(user)}. Scan this with an authenticator app:\n")
    print(totp.qr_text(uri))
    print(f"or enter the secret by hand: {secret.reveal().decode()}\n")
    print(f"URI: {uri}\n")
    print("Log in with the password followed by the 6-digit code, e.g. 'password123456'.")
    print("It is shown this once; the stored copy is encrypted.")
    return EXIT_OK


# -- device -------------------------------------------------------------------


def _device_json(device: Any, now: float) -> dict[str, Any]:
    """A device record for --json: never its secret (the keyed digest of its code);
    `bound_to` says what the trust is bound to ("code", or the approved address)."""
    fields = {k: v for k, v in device.__dict__.items() if k != "secret"}
    bound = "code" if device.secret is not None else device.bound_address
    return {**fields, "trusted": device.trusted_at(now), "bound_to": bound}


def _device(args: argparse.Namespace) -> int:
    config = load(args, check_files=False)
    user = user_name(args.user, config)
    store = open_store(config)
    now = time.time()
    if args.action == "list":
        devices = store.list_devices(user)
        if args.json:
            print_json([_device_json(d, now) for d in devices])
        else:
            table(
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
                        when(d.trusted_until),
                        when(d.last_seen_at),
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
                f"device {shown(args.id)} of {shown(user)}: login from"
                f" {shown(device.last_address)} ({shown(client)}),"
                f" trusted at that address only until {when(until)}"
            )
    else:
        done = store.revoke(user, f"device:{args.id}", time.time())
        verb = "revoked"
    if args.json:
        print_json({"id": args.id, verb: done})
    elif done:
        print(f"{verb} device {shown(args.id)} of {shown(user)}")
    else:
        print(f"imapguard: {shown(user)} has no device {shown(args.id)}", file=sys.stderr)
    return EXIT_OK if done else EXIT_PROBLEM


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "user": _user,
    "app-password": _app_password,
    "totp": _totp,
    "device": _device,
}
