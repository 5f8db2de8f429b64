"""`python -m imapguard.cli` (what the tests and benchmarks run)."""

import sys

from imapguard.cli import main

if __name__ == "__main__":
    sys.exit(main())
