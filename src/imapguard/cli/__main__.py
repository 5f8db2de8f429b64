"""`python -m imapguard.cli` (what the tests and benchmarks run)."""

import sys

from imapguard.cli import main

sys.exit(main())
