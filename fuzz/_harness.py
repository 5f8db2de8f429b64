"""What every fuzz target shares: instrumentation, the read splittings, the entry point.

A target's input is the peer's byte stream itself (a client's commands, a server's
responses, a target list), so the seed corpora are readable protocol samples and a
crash file reproduces as it is. Whatever a target varies besides the stream (which
limits, which mode) is a function of the stream's CRC-32, so the same input always
runs the same way, and every mutation of the input may pick another variant.

"Same result fed whole or byte by byte": every target feeds the stream whole, then
split into reads in one other way chosen by the CRC: at every byte (half of the
streams up to `BYTEWISE_MAX` bytes), at every line end and between CR and LF, or at
up to 16 points drawn from the CRC; the results must be equal.

`IMAPGUARD_FUZZ_NO_INSTRUMENT=1` imports the modules without atheris's bytecode
instrumentation, for measuring line coverage with coverage.py (fuzz/run.py --coverage).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys
import zlib
from collections.abc import Callable, Iterator

import atheris
from atheris.import_hook import instrument_imports

__all__ = ["BYTEWISE_MAX", "instrumented", "main", "pick", "rng", "splittings"]

#: Longer streams are not fed byte by byte (they still get the line-end and the
#: random splits): n reads cost n times the parser's per-read work, which made
#: the byte-by-byte run most of the time of an execution on two shared cores.
BYTEWISE_MAX = 256


def instrumented() -> contextlib.AbstractContextManager[object]:
    """Wrap the imports of the code under test: only imapguard's modules are
    instrumented (pydantic, httpx, cryptography ... are not what we fuzz)."""
    if os.environ.get("IMAPGUARD_FUZZ_NO_INSTRUMENT"):
        return contextlib.nullcontext()
    return instrument_imports(include=["imapguard"])


def rng(data: bytes, salt: int = 0) -> random.Random:
    """A generator seeded by the input: deterministic per input."""
    return random.Random(zlib.crc32(data) ^ salt)  # noqa: S311 - not cryptography


def pick(data: bytes, count: int, salt: int = 0) -> int:
    """A variant number in range(count), fixed for this input."""
    return rng(data, salt).randrange(count)


def _cut(data: bytes, points: set[int]) -> list[bytes]:
    edges = sorted({0, len(data)} | {p for p in points if 0 < p < len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def splittings(data: bytes) -> Iterator[list[bytes]]:
    """Another way the same stream may arrive, as a list of reads: byte by byte
    (half of the inputs up to BYTEWISE_MAX bytes), at every line end and between
    CR and LF, or at random points; one of them per execution, chosen by the CRC,
    which halves the cost of an execution against trying all three."""
    choice = pick(data, 4, salt=0x5B1)
    if len(data) <= 1:
        return
    if len(data) <= BYTEWISE_MAX and choice < 2:
        yield [data[i : i + 1] for i in range(len(data))]
        return
    if choice == 2:
        lines = {i + 1 for i, b in enumerate(data) if b == 0x0A}
        lines |= {i for i in range(1, len(data)) if data[i - 1 : i + 1] == b"\r\n"}
        if lines:
            yield _cut(data, lines)
            return
    r = rng(data, 0x5EED)
    yield _cut(data, {r.randrange(1, len(data)) for _ in range(r.randrange(1, 17))})


def main(test_one_input: Callable[[bytes], None]) -> None:
    """libFuzzer's command line (corpus directories, -runs=, -max_total_time= ...)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
