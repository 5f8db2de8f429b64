"""Metrics fed by the audit events: an `AuditLog` subscriber.

Each connection's phase is followed by its session id (connect: pre-auth; relay:
logged in; close: gone), so the connection gauge is exactly the audit log's
view. The table of open sessions holds one short string per open connection
and loses its entry at the connection's close event, which every connection
emits whatever ends it."""

from __future__ import annotations

from imapguard.audit import events
from imapguard.metrics.registry import POSTURES, Metrics

__all__ = ["AuditMetrics"]

PREAUTH = "preauth"
RELAY = "relay"


class AuditMetrics:
    """Subscribe it to the audit log: `audit.subscribe(AuditMetrics(metrics))`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._phase: dict[str, str] = {}
        for posture in POSTURES:
            metrics.posture.labels(posture).set(1 if posture == "normal" else 0)

    def __call__(self, event: events.Event, ts: float) -> None:
        m = self.metrics
        session = event.session
        match event:
            case events.Connect():
                m.connections_total.labels(event.tls_mode).inc()
                if session is not None:
                    self._move(session, PREAUTH)
            case events.Relay():
                if session is not None:
                    self._move(session, RELAY)
            case events.Close():
                if session is not None:
                    self._move(session, None)
                if event.duration is not None:
                    m.session_seconds.observe(event.duration)
                if event.bytes_in:
                    m.relay_bytes_total.labels("in").inc(event.bytes_in)
                if event.bytes_out:
                    m.relay_bytes_total.labels("out").inc(event.bytes_out)
            case events.Auth():
                m.logins_total.labels(
                    event.method or "none", event.result, m.reason_label(event.reason)
                ).inc()
                if event.elapsed is not None:
                    m.login_seconds.labels(event.result).observe(event.elapsed)
            case events.Tls():
                if event.handshake is not None:
                    m.handshake_seconds.observe(event.handshake)
            case events.Refused():
                m.refused_total.inc(event.count)
            case events.TlsFailed():
                m.tls_failures_total.inc()
            case events.DefenseBlock():
                m.blocks_total.labels(event.target_kind, str(event.enforced).lower()).inc()
            case events.SprayAlert():
                m.spray_alerts_total.inc()
            case events.CompromiseSignal():
                m.compromise_signals_total.inc()
            case events.DefenseUnavailable():
                m.defense_unavailable_total.inc()
            case events.Revoked():
                m.revoked_total.inc()
            case events.Posture():
                for posture in POSTURES:
                    m.posture.labels(posture).set(1 if posture == event.after else 0)
            case _:
                pass

    def _move(self, session: str, phase: str | None) -> None:
        before = self._phase.pop(session, None)
        if before is not None:
            self.metrics.connections.labels(before).dec()
        if phase is not None:
            self._phase[session] = phase
            self.metrics.connections.labels(phase).inc()
