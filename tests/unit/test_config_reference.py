"""The configuration reference is generated from the models and their comments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from imapguard.config.base import Section
from imapguard.config.reference import (
    comments,
    default,
    describe,
    entries,
    render,
    undocumented,
)


class _Example(Section):
    # The first key, documented above.
    first: Annotated[int, Field(ge=1, le=9)] = 3
    second: Literal["a", "b"] = "a"  # documented at the end of its line
    third: tuple[str, ...] = ()

    # -- a heading, not a meaning ------------------------------------------------
    fourth: float | None = None


def test_comments_above_or_at_the_end_of_the_line_are_meanings() -> None:
    notes = comments(_Example)
    assert notes["first"] == "The first key, documented above."
    assert notes["second"] == "documented at the end of its line"
    assert notes["third"] == ""  # not the comment of the key above it
    assert notes["fourth"] == ""  # a heading is not a meaning


def test_types_and_defaults_read_as_an_administrator_reads_them() -> None:
    fields = _Example.model_fields
    assert describe(fields["first"].annotation, fields["first"]) == "integer (≥ 1, ≤ 9)"
    assert describe(fields["second"].annotation) == '"a" \\| "b"'
    assert describe(fields["third"].annotation) == "list of strings"
    assert describe(fields["fourth"].annotation) == "number, optional"
    assert default(fields["first"]) == "`3`"
    assert default(fields["third"]) == "`[]`"
    assert default(fields["fourth"]) == "(none)"


def test_every_section_of_the_configuration_is_in_the_reference() -> None:
    text = render()
    for title in (
        "[state]",
        "[[listen]]",
        "[tls]",
        "[upstream]",
        "[auth]",
        "[defense]",
        "[[policy.rules]]",
        "[groups]",
        "[portal]",
        "[notify]",
        "[oauth]",
    ):
        assert f"## `{title}`" in text, title
    keys = {(e.section, e.key) for e in entries()}
    assert ("defense", "pair_free") in keys
    assert ("policy.rules", "not_networks") in keys
    assert ("groups", "NAME") in keys


def test_every_key_has_a_meaning() -> None:
    assert undocumented() == []


def test_the_committed_reference_is_in_step_with_the_models() -> None:
    committed = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert committed == render(), (
        "docs/configuration.md is stale: python -m imapguard.config.reference > "
        "docs/configuration.md"
    )
