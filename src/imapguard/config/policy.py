"""`[policy]`, `[[policy.rules]]` and `[groups]`: the schema and its validation,
the groups-file format, and the warnings about what is legal but probably not meant.

Rules of the schema (evaluation is in `imapguard.policy.engine`):

- Rules are tried in order; the first whose conditions all hold decides; after
  the last rule comes an implicit deny. No `[policy]` section at all means "allow
  every login that authenticated" (imapguard before policies existed).
- Every condition is optional. A list condition holds when any element matches;
  its `not_*` twin holds when none does. A condition on something the request
  does not know (no method, no factor, no listener given to `policy explain`)
  holds neither way, so such a rule does not match.
- `action = "require"`: the login must have proven one of `require` (factor
  names) or a factor of strength >= `require_strength`; else the decision is
  REQUIRE_FACTOR. A rule's `alert` goes with its deny / require decision, and
  `default_alert` with any other refusal; the caller shows it (`[ALERT]`) only
  after a correct password, so it tells a guesser nothing.
- A `countries` condition needs `geoip_database`; without one (or when the file
  cannot be opened) such rules never match and `policy_warnings` says so at start.
- Every problem is an error at load with its key path
  (`policy.rules[2].networks[0]: ...`); warnings are for what is legal but
  probably not meant.

Groups (`[groups]`): `staff = ["alice", ...]` for each group, and/or
`groups_file = "/etc/imapguard/groups.txt"` with one `group: user1, user2` per
line (`#` comments; a group may span several lines). Names compare
case-insensitively. The line format is chosen over JSON because it is what
`getent group`-style exports and shell scripts produce, diffs well, and needs no
quoting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from imapguard import net
from imapguard.config.auth import check_factor, check_method
from imapguard.config.base import Section
from imapguard.names import MAX_USER_BYTES, well_formed
from imapguard.vocab import MAX_STRENGTH

__all__ = [
    "CONDITION_KEYS",
    "COUNTRY_CODES",
    "IMPLICIT_DENY",
    "NO_POLICY",
    "UNKNOWN_COUNTRY",
    "GroupsConfig",
    "PolicyConfig",
    "Rule",
    "check_group",
    "check_user_pattern",
    "parse_groups_file",
    "policy_problems",
    "policy_warnings",
]

# Decision.rule when no configured rule decided.
IMPLICIT_DENY = "implicit deny"
NO_POLICY = "no policy configured"
UNKNOWN_COUNTRY = "unknown"

# ISO 3166-1 alpha-2 (the 249 assigned codes), plus what IP databases use besides:
# XK (Kosovo, user-assigned, used by MaxMind and DB-IP) and EU / AP (RIR records
# for a whole region).
_ISO_3166_ALPHA_2 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM
    BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX
    CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG
    GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR
    IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV
    LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE
    NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO
    RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF
    WS YE YT ZA ZM ZW XK EU AP
"""
COUNTRY_CODES = frozenset(_ISO_3166_ALPHA_2.split())
_COUNTRY_HINTS = {"UK": "the United Kingdom is GB"}

# RFC 3501 resp-text is 7-bit TEXT-CHAR; "]" would end a response code early in
# naive clients. 200 characters fit one line of every client's alert dialog.
MAX_ALERT = 200
_GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_.+@-]{0,63}")


# -- value checks (each raises ValueError; pydantic adds the key path) ---------


def check_user_pattern(value: str) -> str:
    """An account name, or a pattern of them (`*`), lower case (imapguard.names)."""
    if not value or len(value.encode("utf-8", "surrogatepass")) > MAX_USER_BYTES:
        raise ValueError(f"a user name has 1 to {MAX_USER_BYTES} bytes")
    if not well_formed(value):
        raise ValueError(f"{value!r} is no account name (no spaces, quotes or control characters)")
    return value.lower()


def check_group(value: str) -> str:
    """A group name, lower case."""
    lowered = value.lower()
    if not _GROUP_NAME.fullmatch(lowered):
        raise ValueError(
            f"{value!r} is no group name (1 to 64 of letters, digits and _.+@-, "
            "starting with a letter or digit)"
        )
    return lowered


def _check_network(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an address or CIDR network") from None
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        # 10.0.0.1/8 is more often a typo than a wish for 10.0.0.0/8.
        raise ValueError(f"{value!r} has host bits set: did you mean {network}?") from None
    # ::ffff:a.b.c.d/N is the IPv4 network a.b.c.d/(N-96), as clients are (imapguard.net).
    base = net.parse(str(network.network_address))
    if network.version == 6 and network.prefixlen >= 96 and base is not None and base.version == 4:
        return str(ipaddress.IPv4Network((base, network.prefixlen - 96)))
    return str(network)


def _check_country(value: str) -> str:
    if value.lower() == UNKNOWN_COUNTRY:
        return UNKNOWN_COUNTRY
    code = value.upper()
    if code not in COUNTRY_CODES:
        hint = _COUNTRY_HINTS.get(code, "two letters, e.g. DE, FR, US; or 'unknown'")
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code ({hint})")
    return code


def _check_listener(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("a listener is written as in [[listen]].address, e.g. 0.0.0.0:993")
    return value


def _check_alert(value: str) -> str:
    if not value:
        raise ValueError("an alert text must not be empty")
    if len(value) > MAX_ALERT:
        raise ValueError(f"an alert text has at most {MAX_ALERT} characters")
    bad = [c for c in value if not 0x20 <= ord(c) <= 0x7E or c == "]"]
    if bad:
        raise ValueError(
            f"an alert text is printable ASCII without ']' (found {bad[0]!r}); "
            "IMAP response text is 7-bit and one line"
        )
    return value


def _check_rule_name(value: str) -> str:
    if not value or len(value) > 64 or not value.isprintable() or value != value.strip():
        raise ValueError("a rule name has 1 to 64 printable characters")
    if value.lower() in (IMPLICIT_DENY, NO_POLICY):
        raise ValueError(f"{value!r} is reserved for decisions no rule made")
    return value


def _non_empty(value: list[str] | None) -> list[str] | None:
    if value is not None and not value:
        raise ValueError("an empty list never matches: remove the key or name something")
    return value


Factor = Annotated[str, AfterValidator(check_factor)]
Method = Annotated[str, AfterValidator(check_method)]
UserPattern = Annotated[str, AfterValidator(check_user_pattern)]
GroupName = Annotated[str, AfterValidator(check_group)]
Network = Annotated[str, AfterValidator(_check_network)]
Country = Annotated[str, AfterValidator(_check_country)]
Listener = Annotated[str, AfterValidator(_check_listener)]
Alert = Annotated[str, AfterValidator(_check_alert)]
RuleName = Annotated[str, AfterValidator(_check_rule_name)]
# Strict: TOML has integers and booleans, so "3" or "yes" is a mistake, not a 3 or a True.
Strength = Annotated[StrictInt, Field(ge=1, le=MAX_STRENGTH)]


# A list condition: None (not set) or at least one element.
Users = Annotated[list[UserPattern] | None, AfterValidator(_non_empty)]
GroupNames = Annotated[list[GroupName] | None, AfterValidator(_non_empty)]
Networks = Annotated[list[Network] | None, AfterValidator(_non_empty)]
Countries = Annotated[list[Country] | None, AfterValidator(_non_empty)]
Listeners = Annotated[list[Listener] | None, AfterValidator(_non_empty)]
Methods = Annotated[list[Method] | None, AfterValidator(_non_empty)]
Factors = Annotated[list[Factor] | None, AfterValidator(_non_empty)]


class Rule(Section):
    """One `[[policy.rules]]` entry. Field order matters: `require` and `alert`
    are checked against `action`, which pydantic has validated before them."""

    # Unique name of the rule, shown in audit events and `policy explain`.
    name: RuleName
    # What the rule decides when all its conditions hold: allow, deny, or require a factor.
    action: Literal["allow", "deny", "require"]
    # With action = "require": the factors of which one must be proven.
    require: list[Factor] = Field(default_factory=list)
    # With action = "require": or any factor at least this strong (vocabulary strengths).
    require_strength: Strength | None = None
    # Text the client is shown ([ALERT]) when this rule refuses a login with a correct password.
    alert: Alert | None = None

    # Account names (or patterns with *) the rule applies to.
    users: Users = None
    # Account names the rule does not apply to.
    not_users: Users = None
    # Groups of [groups] the rule applies to.
    groups: GroupNames = None
    # Groups whose members the rule does not apply to.
    not_groups: GroupNames = None
    # Client addresses or networks (CIDR) the rule applies to.
    networks: Networks = None
    # Client networks the rule does not apply to.
    not_networks: Networks = None
    # Client countries (ISO 3166 codes, from policy.geoip_database) the rule applies to.
    countries: Countries = None
    # Client countries the rule does not apply to.
    not_countries: Countries = None
    # true: only logins with a verified client certificate; false: only without.
    client_cert: StrictBool | None = None
    # Listener addresses (as in [[listen]]) the rule applies to.
    listeners: Listeners = None
    # Listeners the rule does not apply to.
    not_listeners: Listeners = None
    # Login methods the rule applies to.
    methods: Methods = None
    # Login methods the rule does not apply to.
    not_methods: Methods = None
    # Proven factors the rule applies to.
    factors: Factors = None
    # Proven factors the rule does not apply to.
    not_factors: Factors = None
    # Applies when the proven factor is at least this strong.
    min_strength: Strength | None = None

    @field_validator("require", "require_strength")
    @classmethod
    def _only_for_require(cls, value: object, info: ValidationInfo) -> object:
        action = info.data.get("action")
        if value and action is not None and action != "require":
            raise ValueError(f'only with action = "require" (this rule\'s action is "{action}")')
        return value

    @field_validator("alert")
    @classmethod
    def _not_for_allow(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("action") == "allow":
            raise ValueError('an alert goes with a refusal: action "deny" or "require"')
        return value

    @model_validator(mode="after")
    def _require_names_something(self) -> Rule:
        if self.action == "require" and not self.require and self.require_strength is None:
            raise ValueError(
                'action = "require" needs require = [factors] and/or require_strength = N'
            )
        return self

    def conditions(self) -> dict[str, Any]:
        """The conditions this rule sets, in the order they are checked."""
        return {key: getattr(self, key) for key in CONDITION_KEYS if getattr(self, key) is not None}


# The order in which a rule's conditions are checked, and so the condition
# `explain` names as the first that failed: set lookups before globs and network
# masks; the factor last, as the request may not carry one yet.
CONDITION_KEYS = (
    "listeners",
    "not_listeners",
    "methods",
    "not_methods",
    "client_cert",
    "users",
    "not_users",
    "groups",
    "not_groups",
    "networks",
    "not_networks",
    "countries",
    "not_countries",
    "factors",
    "not_factors",
    "min_strength",
)


class PolicyConfig(Section):
    """The `[policy]` section."""

    section_key = "policy"

    # A MaxMind-format (.mmdb) country database; see imapguard.policy.geoip.
    geoip_database: str | None = None
    # Shown with [ALERT] on a refusal whose rule has no alert of its own.
    default_alert: Alert | None = None
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        first: dict[str, int] = {}
        for i, rule in enumerate(rules):
            key = rule.name.lower()
            if key in first:
                raise ValueError(
                    f"rule name {rule.name!r} is used by rules[{first[key]}] and rules[{i}]"
                )
            first[key] = i
        return rules


class GroupsConfig(BaseModel):
    """The `[groups]` section: `name = ["user", ...]` per group, plus the
    reserved key `groups_file`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    section_key: ClassVar[str] = "groups"

    # A file of `group: user1, user2` lines (# comments), read at start and on SIGHUP.
    groups_file: str | None = None
    # A group: `staff = ["alice", "bob"]` (names compare case-insensitively).
    __pydantic_extra__: dict[str, list[UserPattern]] = Field(init=False)

    @model_validator(mode="after")
    def _group_names(self) -> GroupsConfig:
        seen: set[str] = set()
        for name, users in (self.__pydantic_extra__ or {}).items():
            lowered = check_group(name)
            if lowered in seen:
                raise ValueError(f"group {name!r} is listed twice (names ignore case)")
            seen.add(lowered)
            for user in users:
                if "*" in user:
                    raise ValueError(f"{name}: group members are account names, not patterns")
        return self

    def members(self) -> dict[str, frozenset[str]]:
        """Group → its members, lower case, as written in the section."""
        return {
            name.lower(): frozenset(users)
            for name, users in (self.__pydantic_extra__ or {}).items()
        }


def parse_groups_file(text: str) -> dict[str, frozenset[str]]:
    """Parse a groups file (`group: user1, user2` per line; `#` comments; users
    separated by commas and/or spaces; a group may repeat). Raises ValueError
    naming the line."""
    groups: dict[str, set[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        name, colon, rest = line.partition(":")
        if not colon:
            raise ValueError(f"line {lineno}: expected 'group: user1, user2'")
        try:
            group = check_group(name.strip())
            users = {check_user_pattern(u) for u in re.split(r"[,\s]+", rest.strip()) if u}
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
        if any("*" in u for u in users):
            raise ValueError(f"line {lineno}: group members are account names, not patterns")
        groups.setdefault(group, set()).update(users)
    return {name: frozenset(users) for name, users in groups.items()}


# -- cross-checks the schema cannot do on its own ------------------------------


def _has_countries(rule: Rule) -> bool:
    return rule.countries is not None or rule.not_countries is not None


def policy_warnings(
    config: PolicyConfig,
    *,
    countries_available: bool | None = None,
    known_groups: Collection[str] | None = None,
) -> list[str]:
    """What is legal but probably not meant, for the caller to print at start.
    `countries_available`: whether the country database opened (default: whether
    one is configured). `known_groups`: the defined groups, if the caller knows
    them all (not with LDAP groups)."""
    warnings: list[str] = []
    if countries_available is None:
        countries_available = config.geoip_database is not None
    if not config.rules:
        warnings.append("policy: no rules, so every login is refused (implicit deny)")
    catch_all: int | None = None
    known = {g.lower() for g in known_groups} if known_groups is not None else None
    for i, rule in enumerate(config.rules):
        key = f"policy.rules[{i}]"
        if catch_all is not None:
            warnings.append(
                f"{key} ({rule.name!r}) is never reached: "
                f"policy.rules[{catch_all}] ({config.rules[catch_all].name!r}) has no conditions"
            )
        elif not rule.conditions():
            catch_all = i
        if _has_countries(rule) and not countries_available:
            why = (
                "no policy.geoip_database is configured"
                if config.geoip_database is None
                else f"the country database {config.geoip_database} could not be opened"
            )
            warnings.append(
                f"{key} ({rule.name!r}) has a countries condition but {why}: it never matches"
            )
        if known is not None:
            for field in ("groups", "not_groups"):
                for j, group in enumerate(getattr(rule, field) or ()):
                    if group not in known:
                        warnings.append(f"{key}.{field}[{j}]: group {group!r} is not defined")
    return warnings


def policy_problems(
    config: PolicyConfig, *, listen_addresses: Collection[str]
) -> list[tuple[str, str]]:
    """Errors that need the rest of the configuration: a `listeners` condition
    must name a configured `[[listen]].address` (exactly as written there)."""
    problems: list[tuple[str, str]] = []
    for i, rule in enumerate(config.rules):
        for field in ("listeners", "not_listeners"):
            for j, listener in enumerate(getattr(rule, field) or ()):
                if listener not in listen_addresses:
                    problems.append(
                        (
                            f"policy.rules[{i}].{field}[{j}]",
                            f"no [[listen]] has address {listener!r} "
                            f"(configured: {', '.join(listen_addresses) or 'none'})",
                        )
                    )
    return problems
