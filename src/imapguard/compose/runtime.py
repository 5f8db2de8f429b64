"""What a reload replaces: the auth service with its defense and policy, the
upstream, TLS and the limits (`gateway_runtime`)."""

from __future__ import annotations

import logging
from functools import partial

from imapguard.auth.chokepoint import Authenticator
from imapguard.auth.model import FactorSettings, S, Upstream
from imapguard.compose.observing import (
    observed_check,
    timed_counters,
    timed_store,
    upstream_observer,
)
from imapguard.compose.services import Services, defense, keys, notice_hook
from imapguard.config import Config, account_names, parse_address
from imapguard.config.files import file_warnings
from imapguard.gateway.server import Runtime
from imapguard.gateway.upstream import (
    UpstreamLogin,
    UpstreamSession,
    UpstreamSettings,
    check_upstream,
)
from imapguard.imap.framing import FrameLimits
from imapguard.policy.gate import load_policy
from imapguard.secret import Secret
from imapguard.state.opening import counter_store
from imapguard.tls import client_context, server_context

__all__ = [
    "authenticator",
    "gateway_runtime",
    "upstream_settings",
]

log = logging.getLogger("imapguard")


def authenticator(config: Config, services: Services, upstream: Upstream[S]) -> Authenticator[S]:
    """The auth service as [auth], [defense], [policy] and [groups] say, logging
    in to `upstream`: the same for every front end."""
    if not config.defense.enforce:
        log.warning("defense.enforce = false: blocks and delays are recorded, not enforced")
    policy, warnings = load_policy(config.policy, config.groups)
    for warning in warnings:
        log.warning("%s", warning)
    k, a, own, m = keys(config), config.auth, services.counters, services.metrics
    return Authenticator(
        methods=tuple(a.methods),
        store=timed_store(services.store, m),
        store_executor=services.executor,
        reader=timed_store(services.reader, m),
        bookkeeping=services.bookkeeping,
        gate_releases=services.releases,
        gate_turns=services.turns,
        factors=FactorSettings(
            sufficient=tuple(a.sufficient),
            device_trust=a.device_trust_days * 86400.0,
            totp_max_failures=a.totp_max_failures,
            totp_lockout=a.totp_lockout,
            new_device_approval=a.new_device_approval,
            verified_cache_seconds=a.verified_cache_seconds,
            approved_device_trust=a.approved_device_days * 86400.0,
            names=account_names(config),
        ),
        totp_key=k.totp_seal,
        on_notice=notice_hook(services.notifier) if services.notifier is not None else None,
        token_verifier=services.tokens,
        oauth_scope=config.oauth.scope if config.oauth is not None else "openid email",
        policy=policy,
        defense=defense(
            config,
            timed_counters(own or counter_store(services.store), m),
            k,
            reader=timed_counters(own or counter_store(services.reader), m),
        ),
        read_executor=services.reads,
        counter_read_executor=services.counter_reads,
        app_password_key=k.app_password,
        upstream=upstream,
        audit=services.audit,
        failure_delay=a.failure_delay,
        failure_jitter=a.failure_jitter,
    )


def upstream_settings(config: Config) -> UpstreamSettings:
    """[upstream]: where the IMAP server is and how to log in to it."""
    up = config.upstream
    host, port = parse_address(up.address)
    master = up.login == "master"
    return UpstreamSettings(
        host=host,
        port=port,
        tls=up.tls,
        ssl_context=client_context(up.ca) if up.tls != "none" else None,
        server_name=up.server_name or host,
        master_user=up.master_user if master else None,
        master_password=(
            Secret.from_file(up.master_password_file)
            if master and up.master_password_file
            else None
        ),
        forward_client_ip=up.forward_client_ip,
        connect_timeout=up.connect_timeout,
        login_timeout=up.login_timeout,
    )


def gateway_runtime(config: Config, services: Services) -> Runtime:
    """What the gateway's new connections use; a reload builds a new one."""
    upstream = upstream_settings(config)
    login = UpstreamLogin(upstream, upstream_observer(services.metrics))
    auth: Authenticator[UpstreamSession] = authenticator(config, services, login)
    for warning in file_warnings(config):
        log.warning("%s", warning)
    limits = config.limits
    tls = config.tls
    return Runtime(
        config=config,
        server_ssl=server_context(
            tls.certificate,
            tls.private_key,
            tls.min_version,
            tls.client_ca,
            client_crl=tls.client_crl,
            client_crl_check=tls.client_crl_check,
        ),
        mechanisms=_mechanisms(config.auth.methods),
        trusted=auth.defense.in_trusted_network if auth.defense is not None else _nobody,
        authenticator=auth,
        # Connection and TLS only: Dovecot counts a master-user check against the
        # gateway's address (`check-config --connect` makes it, by hand).
        upstream_check=observed_check(
            partial(check_upstream, upstream, master=False), services.metrics
        ),
        frame_limits=FrameLimits(
            max_line=limits.max_line,
            max_literal=limits.max_literal,
            max_command=max(2 * limits.max_line, limits.max_line + limits.max_literal),
        ),
    )


def _nobody(ip: str) -> bool:
    return False


def _mechanisms(methods: list[str]) -> tuple[str, ...]:
    """The SASL mechanisms to offer after TLS, from auth.methods."""
    offered = ["PLAIN"] if {"app-password", "password", "password+totp"} & set(methods) else []
    offered += [m.upper() for m in ("oauthbearer", "xoauth2") if m in methods]
    if "client-cert" in methods:
        offered.append("EXTERNAL")
        if "PLAIN" not in offered:
            offered.insert(0, "PLAIN")  # password + certificate
    return tuple(offered)
