"""Where the tests find the repository and their fixtures, wherever the test file lives."""

from __future__ import annotations

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parent.parent
#: tests/fixtures (canned provider payloads, published provider specs, routing files).
FIXTURES_DIR = REPO / "tests" / "fixtures"
