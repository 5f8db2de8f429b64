"""The policy as the gateway and `imapguard policy explain` use it: the compiled
rules, the groups and the country database, loaded together from the
configuration, and one `request()` that turns a login into a `PolicyRequest`.

Loading never fails on the country database: if it is missing or unreadable,
country conditions never match and the reason comes back as a warning, which
`serve` logs and `check-config` prints: a missing database degrades one kind
of condition, visibly, instead of stopping the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imapguard.policy.engine import (
    CompiledPolicy,
    Decision,
    Explanation,
    PolicyRequest,
    compile_policy,
    evaluate,
    explain,
)
from imapguard.policy.geoip import (
    CountryDatabase,
    CountryDatabaseError,
    CountryLookup,
    NoCountryDatabase,
)
from imapguard.policy.rules import Groups, GroupsConfig, PolicyConfig, policy_warnings

__all__ = ["PolicyGate", "load_policy"]


@dataclass(frozen=True)
class PolicyGate:
    policy: CompiledPolicy | None = None
    groups: Groups = field(default_factory=Groups)
    countries: CountryLookup = field(default_factory=NoCountryDatabase)

    def request(
        self,
        user: str,
        ip: str,
        *,
        method: str | None = None,
        factor: str | None = None,
        listener: str | None = None,
        client_cert: bool = False,
    ) -> PolicyRequest:
        return PolicyRequest(
            user=user,
            ip=ip,
            groups=self.groups.groups_of(user),
            country=self.countries.country(ip),
            client_cert=client_cert,
            method=method,
            factor=factor,
            listener=listener,
        )

    def decide(self, request: PolicyRequest) -> Decision:
        return evaluate(self.policy, request)

    def explain(self, request: PolicyRequest) -> Explanation:
        return explain(self.policy, request)


def load_policy(
    policy: PolicyConfig | None, groups: GroupsConfig | None
) -> tuple[PolicyGate, list[str]]:
    """The gate and the warnings to show (raises ConfigError for the groups file)."""
    group_map = Groups.from_config(groups)
    if policy is None:
        return PolicyGate(None, group_map), []
    warnings: list[str] = []
    countries: CountryLookup = NoCountryDatabase()
    if policy.geoip_database is not None:
        try:
            countries = CountryDatabase.open(policy.geoip_database)
        except CountryDatabaseError as exc:
            warnings.append(f"policy.geoip_database: {exc}")
    warnings += policy_warnings(
        policy, countries_available=countries.available, known_groups=group_map.names
    )
    compiled = compile_policy(policy, countries_available=countries.available)
    return PolicyGate(compiled, group_map, countries), warnings
