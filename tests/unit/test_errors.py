"""errors.py draws the whole exception tree: every exception class defined under
src/imapguard is in the drawing, under its real base class, and the drawing names
no class that does not exist. Classes are found by importing every module, so a
module split or added later is covered without touching this test."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import imapguard
from imapguard import errors

_NODE = re.compile(r"── (\w+)")


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(imapguard.__path__, "imapguard."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                assert name not in found, f"two exception classes named {name}"
                found[name] = value
    return found


def _drawn_parents() -> dict[str, str]:
    """Each class in the drawing → the class drawn above it."""
    doc = errors.__doc__ or ""
    lines = doc.splitlines()
    start = lines.index("    Exception")
    path = ["Exception"]
    parents: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = _NODE.search(line)
        if match is None:
            continue  # a description continued on the next line
        depth = match.start() // 4
        del path[depth:]
        parents[match.group(1)] = path[-1]
        path.append(match.group(1))
    return parents


EXCEPTIONS = _defined_exceptions()
PARENTS = _drawn_parents()


def test_the_drawing_is_parsed() -> None:
    assert PARENTS["ImapguardError"] == "Exception"
    assert PARENTS["StateUnavailable"] == "StateError"
    assert PARENTS["TokenRejected"] == "OAuthError"


def test_every_public_exception_is_drawn_under_its_base() -> None:
    public = {name: cls for name, cls in EXCEPTIONS.items() if not name.startswith("_")}
    assert public, "no exception classes found: the discovery is broken"
    missing = sorted(set(public) - set(PARENTS))
    assert not missing, f"not in errors.py's tree: {missing}"
    for name, cls in public.items():
        assert cls.__base__ is not None
        assert PARENTS[name] == cls.__base__.__name__, (name, cls.__base__)


def test_every_private_exception_is_named() -> None:
    doc = errors.__doc__ or ""
    private = sorted(name for name in EXCEPTIONS if name.startswith("_"))
    assert private, "no private exception classes found: the discovery is broken"
    assert [name for name in private if not re.search(rf"\b{name}\b", doc)] == []


def test_the_drawing_names_only_real_classes() -> None:
    builtin = {"Exception", "ValueError", "TimeoutError"}
    drawn = set(PARENTS) | set(PARENTS.values())
    assert sorted(drawn - set(EXCEPTIONS) - builtin) == []


def test_application_errors_derive_from_imapguard_error() -> None:
    for name in ("SealError", "OAuthError", "CountryDatabaseError", "AdmissionShed"):
        assert issubclass(EXCEPTIONS[name], errors.ImapguardError), name


def test_no_exception_that_nothing_raises() -> None:
    """NotFound was drawn and exported but never raised: it is gone."""
    assert not hasattr(errors, "NotFound")
    src = Path(imapguard.__file__).parent
    users = [p for p in src.rglob("*.py") if re.search(r"\bNotFound\b", p.read_text())]
    assert users == []
