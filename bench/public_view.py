"""The payment object's cost: the old dict projection vs the typed one, same run.

``legacy``: ``gateway.model.public_view`` as it was before the typed models (field lists,
``datetime`` ISO formatting), kept here verbatim as the baseline. ``typed
Payment.public_of(doc)``: what the API and notifications now answer (the public fields
checked and projected straight from the stored document). ``typed
Payment.from_doc(doc).public()``: the same object through a full typed read (every field
validated, internal ones included, as the CLI's ``payments show`` does); ``from_doc``
and ``public`` alone are shown too. The documents are real stored payments captured from
the test suite's flows (tests/fixtures/payment_documents.json: every status, every
provider, refunds, disputes, 3-D Secure, operations in flight).

Each round times every variant over all documents, the order rotating between rounds;
the figures are medians over rounds, in microseconds per payment (the box is shared:
repeat runs and compare within one run)::

    .venv/bin/python bench/public_view.py [--rounds 15] [--loops 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.payment_types import Payment
from tests.legacy_public_view import old_public_view

DOCS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "payment_documents.json"

# ------------------------------------------------------------------ the run


def _round(fn: Callable[[dict[str, Any]], Any], docs: list[dict[str, Any]],
           loops: int) -> float:
    """Microseconds per payment for one pass of ``loops`` x all documents."""
    start = time.perf_counter()
    for _ in range(loops):
        for doc in docs:
            fn(doc)
    return (time.perf_counter() - start) / (loops * len(docs)) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--loops", type=int, default=200)
    args = parser.parse_args(argv)
    docs = json.loads(DOCS.read_text())
    typed = [Payment.from_doc(d) for d in docs]
    for doc, payment in zip(docs, typed, strict=True):  # same answer, or no figures
        assert payment.public() == Payment.public_of(doc) == old_public_view(doc), doc["id"]
    by_id = {d["id"]: p for d, p in zip(docs, typed, strict=True)}
    variants: dict[str, Callable[[dict[str, Any]], Any]] = {
        "legacy public_view(doc)": old_public_view,
        "typed Payment.public_of(doc)": Payment.public_of,
        "typed Payment.from_doc(doc).public()": lambda d: Payment.from_doc(d).public(),
        "  of which Payment.from_doc(doc)": Payment.from_doc,
        "  of which payment.public()": lambda d: by_id[d["id"]].public(),
    }
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(_round(variants[name], docs, args.loops))
    print(f"{len(docs)} stored payments, {args.rounds} rounds x {args.loops} loops; "
          "median (min-max) us per payment")
    base = statistics.median(times[names[0]])
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:40s} {med:7.2f}  ({min(times[name]):.2f}-{max(times[name]):.2f})"
              f"  x{med / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
