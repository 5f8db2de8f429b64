"""What every configuration section shares, and how a problem is reported.

Every section is a frozen pydantic model that refuses unknown keys. A problem,
whether pydantic found it in one value or a section's cross-field validator found
it between several, comes out as (key path, message), the key path as written in
the file (`notify.admin_addresses[1]`), so `imapguard check-config` can list them
all at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imapguard.errors import ConfigError

__all__ = ["Problems", "Seconds", "Section", "key_path", "problems_of", "raise_problems"]

#: A duration in seconds: positive, at most a day.
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Problems(ValueError):
    """Raised by a cross-field validator: [(key below the model, message)], so
    each problem names the key to change, not just the section."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {message}" for key, message in self.problems))


def raise_problems(problems: Sequence[tuple[str, str]]) -> None:
    """Raise `Problems` when there is any."""
    if problems:
        raise Problems(problems)


class Section(BaseModel):
    """A configuration section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The section's key in the file, for key paths when it is checked on its own.
    section_key: ClassVar[str] = ""

    @classmethod
    def checked(cls, values: Mapping[str, Any] | None = None, /, **more: Any) -> Self:
        """The section from its keys, as `load_config` would validate it; raises
        ConfigError naming each bad key by its full path (`oauth.leeway`)."""
        try:
            return cls.model_validate({**(values or {}), **more})
        except ValidationError as exc:
            raise ConfigError(problems_of(exc, cls.section_key)) from None


def key_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """pydantic's error location as the file writes it: `listen[1].tls`."""
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def problems_of(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Every problem of a validation error as (key path, message)."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        key = key_path(err["loc"], prefix)
        error = err.get("ctx", {}).get("error")
        if isinstance(error, Problems):
            out += [(_join(key, sub), message) for sub, message in error.problems]
        elif err["type"] == "extra_forbidden":
            out.append((key or "(top level)", "unknown key"))
        elif err["type"] == "missing":
            out.append((key or "(top level)", "required key is missing"))
        elif err["type"] == "value_error":
            out.append((key or "(top level)", str(err["msg"]).removeprefix("Value error, ")))
        else:
            out.append((key or "(top level)", err["msg"]))
    return out


def _join(key: str, sub: str) -> str:
    if not key or not sub:
        return key or sub or "(top level)"
    return f"{key}{sub}" if sub.startswith("[") else f"{key}.{sub}"
