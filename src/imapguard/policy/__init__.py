"""The zero-trust access policy ("may you?"): ordered rules, first match wins,
an implicit deny after the last one.

- `rules`: group membership, and the vocabulary the engine uses; the `[policy]`
  and `[groups]` schema and its validation are imapguard.config.policy.
- `engine`: `compile_policy` once per load, then the pure `evaluate` and
  `explain` per request.
- `geoip`: the offline country database the caller consults before building a
  `PolicyRequest`.
"""

from imapguard.policy.engine import (
    CompiledPolicy,
    Decision,
    DecisionKind,
    Explanation,
    PolicyRequest,
    RuleTrace,
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
from imapguard.policy.rules import (
    FACTOR_STRENGTH,
    FACTORS,
    IMPLICIT_DENY,
    METHODS,
    NO_POLICY,
    Groups,
    GroupsConfig,
    PolicyConfig,
    Rule,
    parse_groups_file,
    policy_problems,
    policy_warnings,
    strength,
)

__all__ = [
    "FACTORS",
    "FACTOR_STRENGTH",
    "IMPLICIT_DENY",
    "METHODS",
    "NO_POLICY",
    "CompiledPolicy",
    "CountryDatabase",
    "CountryDatabaseError",
    "CountryLookup",
    "Decision",
    "DecisionKind",
    "Explanation",
    "Groups",
    "GroupsConfig",
    "NoCountryDatabase",
    "PolicyConfig",
    "PolicyRequest",
    "Rule",
    "RuleTrace",
    "compile_policy",
    "evaluate",
    "explain",
    "parse_groups_file",
    "policy_problems",
    "policy_warnings",
    "strength",
]
