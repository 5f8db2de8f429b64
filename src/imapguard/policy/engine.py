"""The zero-trust policy engine: "may you?", as a pure function.

Rules of operation:

- `compile_policy(config)` once per load (and SIGHUP): networks become integer
  (address, mask) pairs, user globs one regular expression, lists frozensets.
  A `CompiledPolicy` is immutable and can be swapped atomically on reload.
- `evaluate(policy, request)`: rules in order, the first whose conditions all
  hold decides; after the last rule, an implicit deny. `evaluate(None, ...)`
  (no `[policy]` section) allows every login that authenticated.
- Pure and deterministic: no I/O, clock or randomness. The caller looks up the
  country (`imapguard.policy.geoip`) and the groups (`rules.Groups`) first and
  puts them in the `PolicyRequest`; "who are you" (auth/) and "how often have
  you failed" (defense/) are decided elsewhere.
- A condition on something the request does not carry (no method, factor or
  listener: `policy explain` without them) holds neither way, so the rule does
  not match. The country is different: no country for an address is the value
  "unknown"; only a missing country database makes countries conditions fail.
- IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are their IPv4 address, in the
  request and in configured networks.
- `explain()` walks the same rules and records, per rule, the first condition
  that failed; its decision is by construction the one `evaluate` returns.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, overload

from imapguard.net import Address, parse
from imapguard.policy.rules import (
    IMPLICIT_DENY,
    NO_POLICY,
    UNKNOWN_COUNTRY,
    PolicyConfig,
    Rule,
)
from imapguard.vocab import FACTORS, METHOD_FACTORS, strength

__all__ = [
    "CompiledPolicy",
    "CompiledRule",
    "Decision",
    "DecisionKind",
    "Explanation",
    "PolicyRequest",
    "RuleTrace",
    "compile_policy",
    "evaluate",
    "explain",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyRequest:
    """What the policy decides on. `ip` must be an IP address (ValueError
    otherwise); names are lower-cased here. `factor=None`: nothing proven yet
    (or, for `policy explain`, "any": see `Explanation.by_factor`)."""

    user: str
    ip: str
    groups: frozenset[str] = frozenset()
    country: str | None = None
    client_cert: bool = False
    method: str | None = None
    factor: str | None = None
    listener: str | None = None
    # Derived from `ip` (IPv4-mapped → IPv4), for the network conditions.
    address: Address = field(init=False, repr=False, compare=False)
    ip_int: int = field(init=False, repr=False, compare=False)
    ip_version: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        address = parse(self.ip)
        if address is None:
            raise ValueError(f"not an IP address: {self.ip!r}")
        country = self.country.upper() if self.country else None
        if country == UNKNOWN_COUNTRY.upper():
            country = None
        set_ = object.__setattr__
        set_(self, "user", self.user.lower())
        set_(self, "groups", frozenset(g.lower() for g in self.groups))
        set_(self, "country", country)
        set_(self, "address", address)
        set_(self, "ip_int", int(address))
        set_(self, "ip_version", address.version)

    def to_dict(self) -> dict[str, object]:
        return {
            "user": self.user,
            "groups": sorted(self.groups),
            "ip": self.ip,
            "country": self.country,
            "client_cert": self.client_cert,
            "method": self.method,
            "factor": self.factor,
            "listener": self.listener,
        }


class DecisionKind(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_FACTOR = "require_factor"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer. `rule` is a rule name, IMPLICIT_DENY or NO_POLICY;
    `alert` is for the client (after a correct password only); `required` the
    factors that would do (REQUIRE_FACTOR only)."""

    kind: DecisionKind
    rule: str
    reason: str
    alert: str | None = None
    required: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.kind is DecisionKind.ALLOW

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "rule": self.rule,
            "reason": self.reason,
            "alert": self.alert,
            "required": list(self.required),
        }


_NO_POLICY_DECISION = Decision(
    DecisionKind.ALLOW, NO_POLICY, "no [policy] section: every authenticated login is allowed"
)


# -- conditions ----------------------------------------------------------------

Test = Callable[[PolicyRequest], bool]
Why = Callable[[PolicyRequest], str]


@dataclass(frozen=True, slots=True)
class _Condition:
    key: str
    test: Test
    # Why the test failed, for humans (called by explain only).
    why: Why


def _listed(values: object) -> str:
    if isinstance(values, (list, tuple)):
        return ", ".join(str(v) for v in values)
    return str(values)


def _value_condition(
    key: str, values: list[str], attribute: str, what: str, missing: str
) -> _Condition:
    """A list condition on one optional string of the request (methods,
    listeners, factors); `not_` keys negate. Unknown (None) fails both ways."""
    allowed = frozenset(values)
    listed = _listed(values)
    negate = key.startswith("not_")
    get: Callable[[PolicyRequest], str | None] = operator.attrgetter(attribute)

    def test(r: PolicyRequest) -> bool:
        # None is in no set of names, so the positive test needs no None check.
        return get(r) in allowed

    def test_not(r: PolicyRequest) -> bool:
        value = get(r)
        return value is not None and value not in allowed

    def why(r: PolicyRequest) -> str:
        value = get(r)
        if value is None:
            return f"{key}: {missing}"
        verb = "is one of" if negate else "is not one of"
        return f"{key}: {what} {value} {verb} {listed}"

    return _Condition(key, test_not if negate else test, why)


def _user_condition(key: str, patterns: list[str]) -> _Condition:
    """Exact names in a set; `*x` and `x*` globs by endswith / startswith (C
    speed; "*@students.example.org" is the common case); others by one regex.
    This test is the policy's hottest code, hence one closure and no calls."""
    exact = frozenset(p for p in patterns if "*" not in p)
    suffix_list: list[str] = []
    prefix_list: list[str] = []
    rest: list[str] = []
    for glob in (p for p in patterns if "*" in p):
        if glob.count("*") == 1 and glob.startswith("*"):
            suffix_list.append(glob[1:])
        elif glob.count("*") == 1 and glob.endswith("*"):
            prefix_list.append(glob[:-1])
        else:
            rest.append(glob)
    suffixes, prefixes = tuple(suffix_list), tuple(prefix_list)
    fullmatch = (
        re.compile("|".join(re.escape(g).replace(r"\*", ".*") for g in rest), re.DOTALL).fullmatch
        if rest
        else None
    )
    negate = key == "not_users"
    listed = _listed(patterns)

    def test(r: PolicyRequest) -> bool:
        user = r.user
        # endswith / startswith of an empty tuple are False: no branches needed.
        return (
            user in exact
            or user.endswith(suffixes)
            or user.startswith(prefixes)
            or (fullmatch is not None and fullmatch(user) is not None)
        )

    def test_not(r: PolicyRequest) -> bool:
        return not test(r)

    def why(r: PolicyRequest) -> str:
        if negate:
            return f"{key}: {r.user} matches {listed}"
        return f"{key}: {r.user} matches none of {listed}"

    return _Condition(key, test_not if negate else test, why)


def _group_condition(key: str, groups: list[str]) -> _Condition:
    wanted = frozenset(groups)
    negate = key == "not_groups"
    listed = _listed(groups)

    def test(r: PolicyRequest) -> bool:
        return r.groups.isdisjoint(wanted) is negate

    def why(r: PolicyRequest) -> str:
        if negate:
            return f"{key}: {r.user} is in {_listed(sorted(r.groups & wanted))}"
        have = f"only in {_listed(sorted(r.groups))}" if r.groups else "in no group"
        return f"{key}: {r.user} is in none of {listed} ({have})"

    return _Condition(key, test, why)


def _network_condition(key: str, networks: list[str]) -> _Condition:
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for text in networks:
        # The schema has already turned ::ffff:a.b.c.d/N into a.b.c.d/(N-96).
        net = ipaddress.ip_network(text)
        (v4 if net.version == 4 else v6).append((int(net.network_address), int(net.netmask)))
    by_version = {4: tuple(v4), 6: tuple(v6)}
    negate = key == "not_networks"
    listed = _listed(networks)

    def test(r: PolicyRequest) -> bool:
        ip = r.ip_int
        # A plain loop: any() over a generator costs several times more here.
        for net, mask in by_version[r.ip_version]:  # noqa: SIM110
            if ip & mask == net:
                return True
        return False

    def test_not(r: PolicyRequest) -> bool:
        return not test(r)

    def why(r: PolicyRequest) -> str:
        if negate:
            return f"{key}: {r.address} is in one of {listed}"
        return f"{key}: {r.address} is in none of {listed}"

    return _Condition(key, test_not if negate else test, why)


def _country_condition(key: str, countries: list[str], available: bool) -> _Condition:
    wanted = frozenset(countries)
    negate = key == "not_countries"
    listed = _listed(countries)
    if not available:
        return _Condition(
            key,
            lambda r: False,
            lambda r: f"{key}: no country database, so countries conditions never match",
        )

    def test(r: PolicyRequest) -> bool:
        return ((r.country or UNKNOWN_COUNTRY) in wanted) is not negate

    def why(r: PolicyRequest) -> str:
        verb = "is one of" if negate else "is not one of"
        return f"{key}: country {r.country or UNKNOWN_COUNTRY} {verb} {listed}"

    return _Condition(key, test, why)


def _client_cert_condition(flag: bool) -> _Condition:
    def why(r: PolicyRequest) -> str:
        if flag:
            return "client_cert = true: no verified client certificate was presented"
        return "client_cert = false: a verified client certificate was presented"

    return _Condition("client_cert", lambda r: r.client_cert is flag, why)


def _strength_condition(minimum: int) -> _Condition:
    def test(r: PolicyRequest) -> bool:
        return r.factor is not None and strength(r.factor) >= minimum

    def why(r: PolicyRequest) -> str:
        if r.factor is None:
            return f"min_strength = {minimum}: no factor given"
        return f"min_strength = {minimum}: {r.factor} has strength {strength(r.factor)}"

    return _Condition("min_strength", test, why)


def _compile_condition(key: str, setting: Any, countries_available: bool) -> _Condition:
    match key.removeprefix("not_"):
        case "listeners":
            return _value_condition(key, setting, "listener", "listener", "no listener given")
        case "methods":
            return _value_condition(key, setting, "method", "method", "no method given")
        case "factors":
            return _value_condition(key, setting, "factor", "factor", "no factor given")
        case "users":
            return _user_condition(key, setting)
        case "groups":
            return _group_condition(key, setting)
        case "networks":
            return _network_condition(key, setting)
        case "countries":
            return _country_condition(key, setting, countries_available)
        case "client_cert":
            return _client_cert_condition(setting)
        case "min_strength":
            return _strength_condition(setting)
    raise AssertionError(f"no compiler for condition {key!r}")  # pragma: no cover


def _compile_conditions(rule: Rule, countries_available: bool) -> tuple[_Condition, ...]:
    # Checked in CONDITION_KEYS order, which `explain` reports.
    return tuple(
        _compile_condition(key, setting, countries_available)
        for key, setting in rule.conditions().items()
    )


# -- rules and the policy -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    name: str
    action: str
    conditions: tuple[_Condition, ...]
    tests: tuple[Test, ...]  # the conditions' tests, for evaluate's inner loop
    # action "require": the factors that satisfy it (require, then those of
    # require_strength), in a stable order.
    required: tuple[str, ...]
    alert: str | None
    _fixed: Decision | None  # the decision of an allow / deny rule
    # action "require": the decision for each known factor and for None.
    _by_factor: Mapping[str | None, Decision]

    def decide(self, request: PolicyRequest) -> Decision:
        if self._fixed is not None:
            return self._fixed
        known = self._by_factor.get(request.factor)
        return known if known is not None else self._require(request.factor)

    def _require(self, factor: str | None) -> Decision:
        if factor is not None and factor in self.required:
            return Decision(
                DecisionKind.ALLOW,
                self.name,
                f"{factor} (strength {strength(factor)}) satisfies rule {self.name!r}",
            )
        proved = f"{factor} (strength {strength(factor)})" if factor is not None else "nothing yet"
        return Decision(
            DecisionKind.REQUIRE_FACTOR,
            self.name,
            f"rule {self.name!r} requires one of {', '.join(self.required)}; "
            f"the login proved {proved}",
            self.alert,
            self.required,
        )


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    rules: tuple[CompiledRule, ...]
    default_alert: str | None
    countries_available: bool
    implicit_deny: Decision


def _compile_rule(
    index: int, rule: Rule, default_alert: str | None, countries_available: bool
) -> CompiledRule:
    alert = rule.alert if rule.alert is not None else default_alert
    required: tuple[str, ...] = ()
    fixed: Decision | None = None
    if rule.action == "allow":
        fixed = Decision(DecisionKind.ALLOW, rule.name, f"rule {rule.name!r} allows")
    elif rule.action == "deny":
        fixed = Decision(DecisionKind.DENY, rule.name, f"rule {rule.name!r} denies", alert)
    else:
        names = list(rule.require)
        if rule.require_strength is not None:
            names += [f for f in FACTORS if strength(f) >= rule.require_strength]
        required = tuple(dict.fromkeys(names))
    conditions = _compile_conditions(rule, countries_available)
    compiled = CompiledRule(
        index,
        rule.name,
        rule.action,
        conditions,
        tuple(c.test for c in conditions),
        required,
        alert,
        fixed,
        {},
    )
    if fixed is None:
        table: dict[str | None, Decision] = {f: compiled._require(f) for f in FACTORS}
        table[None] = compiled._require(None)
        compiled = dataclasses.replace(compiled, _by_factor=MappingProxyType(table))
    return compiled


@overload
def compile_policy(
    config: PolicyConfig, *, countries_available: bool | None = None
) -> CompiledPolicy: ...
@overload
def compile_policy(config: None, *, countries_available: bool | None = None) -> None: ...
def compile_policy(
    config: PolicyConfig | None, *, countries_available: bool | None = None
) -> CompiledPolicy | None:
    """Compile `[policy]` (None: no section, so no policy). `countries_available`:
    whether the country database opened (default: whether one is configured);
    without it, countries conditions never match."""
    if config is None:
        return None
    if countries_available is None:
        countries_available = config.geoip_database is not None
    rules = tuple(
        _compile_rule(i, rule, config.default_alert, countries_available)
        for i, rule in enumerate(config.rules)
    )
    implicit = Decision(
        DecisionKind.DENY,
        IMPLICIT_DENY,
        "no rule matched (implicit deny after the last rule)",
        config.default_alert,
    )
    return CompiledPolicy(rules, config.default_alert, countries_available, implicit)


def evaluate(policy: CompiledPolicy | None, request: PolicyRequest) -> Decision:
    """The decision for `request`: first matching rule, else implicit deny."""
    if policy is None:
        return _NO_POLICY_DECISION
    for rule in policy.rules:
        for test in rule.tests:
            if not test(request):
                break
        else:
            return rule.decide(request)
    return policy.implicit_deny


# -- explain ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule as `explain` saw it: matched, or the first condition that failed."""

    index: int
    name: str
    action: str
    matched: bool
    failed: str | None
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "action": self.action,
            "matched": self.matched,
            "failed": self.failed,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    request: PolicyRequest
    decision: Decision
    # The rules tried, in order, ending with the deciding one (all of them
    # when the implicit deny decided).
    trace: tuple[RuleTrace, ...]
    # Without a factor in the request: the decision for each factor the method
    # can prove (every factor when no method is given), weakest first.
    by_factor: tuple[tuple[str, Decision], ...]
    policy_configured: bool

    def explanation_lines(self) -> list[str]:
        r = self.request
        lines = [
            f"user {r.user} · groups {_listed(sorted(r.groups)) or '-'} · ip {r.ip}"
            f" · country {r.country or UNKNOWN_COUNTRY} · method {r.method or '(any)'}"
            f" · factor {r.factor or '(any)'} · listener {r.listener or '(any)'}"
            f" · client certificate {'yes' if r.client_cert else 'no'}",
        ]
        if not self.policy_configured:
            lines.append("no [policy] section: every authenticated login is allowed")
        for step in self.trace:
            verdict = "MATCH" if step.matched else f"no match: {step.detail}"
            lines.append(f"  rules[{step.index}] {step.name} ({step.action}): {verdict}")
        if self.decision.rule == IMPLICIT_DENY:
            lines.append("  after the last rule: implicit deny")
        lines.append(f"decision: {_kind_text(self.decision)} by {self._rule_text(self.decision)}")
        lines.append(f"  {self.decision.reason}")
        if self.decision.alert is not None:
            lines.append(f"  alert (after a correct password): {self.decision.alert}")
        if self.by_factor:
            lines.append("by factor (no factor given):")
            width = max(len(f) for f, _ in self.by_factor)
            for factor, decision in self.by_factor:
                lines.append(
                    f"  {factor:<{width}}  strength {strength(factor)}  "
                    f"{_kind_text(decision):<14}  {self._rule_text(decision)}"
                )
        return lines

    @staticmethod
    def _rule_text(decision: Decision) -> str:
        if decision.rule in (IMPLICIT_DENY, NO_POLICY):
            return decision.rule
        return f"rule {decision.rule!r}"

    def to_dict(self) -> dict[str, object]:
        return {
            "policy_configured": self.policy_configured,
            "request": self.request.to_dict(),
            "decision": self.decision.to_dict(),
            "rules": [step.to_dict() for step in self.trace],
            "by_factor": [
                {"factor": f, "strength": strength(f), "decision": d.to_dict()}
                for f, d in self.by_factor
            ],
        }


def _kind_text(decision: Decision) -> str:
    return decision.kind.name


def explain(policy: CompiledPolicy | None, request: PolicyRequest) -> Explanation:
    """Evaluate like `evaluate`, recording why each rule did or did not match."""
    if policy is None:
        return Explanation(request, _NO_POLICY_DECISION, (), (), policy_configured=False)
    trace: list[RuleTrace] = []
    decision = policy.implicit_deny
    for rule in policy.rules:
        failed = next((c for c in rule.conditions if not c.test(request)), None)
        if failed is None:
            detail = "all conditions hold" if rule.conditions else "no conditions"
            trace.append(RuleTrace(rule.index, rule.name, rule.action, True, None, detail))
            decision = rule.decide(request)
            break
        trace.append(
            RuleTrace(rule.index, rule.name, rule.action, False, failed.key, failed.why(request))
        )
    by_factor: tuple[tuple[str, Decision], ...] = ()
    if request.factor is None:
        candidates = METHOD_FACTORS.get(request.method, FACTORS) if request.method else FACTORS
        ordered = sorted(candidates, key=lambda f: (strength(f), FACTORS.index(f)))
        by_factor = tuple(
            (f, evaluate(policy, dataclasses.replace(request, factor=f))) for f in ordered
        )
    return Explanation(request, decision, tuple(trace), by_factor, policy_configured=True)
