"""Counting what the fuzz and property tests tried, and strategies they share.

Every schemathesis request and every hypothesis input that reaches the code
under test is counted under a label; ``tests/conftest.py`` prints the totals
at the end of the run (section "fuzz and property-test inputs") and, when
TUSBRIDGE_TEST_ARTIFACTS is set, writes them to ``fuzz-counts.json`` there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from hypothesis import strategies as st

#: label -> number of inputs. Labels start with "schemathesis:" or "hypothesis:".
COUNTS: Counter[str] = Counter()


def count(label: str, n: int = 1) -> None:
    COUNTS[label] += n


def totals() -> dict[str, int]:
    schemathesis = sum(n for label, n in COUNTS.items() if label.startswith("schemathesis:"))
    hypothesis = sum(n for label, n in COUNTS.items() if label.startswith("hypothesis:"))
    return {"schemathesis requests": schemathesis, "hypothesis inputs": hypothesis}


def summary_lines() -> list[str]:
    if not COUNTS:
        return []
    lines = [f"{n:>7}  {label}" for label, n in sorted(COUNTS.items())]
    lines += [f"{n:>7}  TOTAL {name}" for name, n in totals().items()]
    return lines


def write_artifact() -> None:
    target = os.environ.get("TUSBRIDGE_TEST_ARTIFACTS")
    if not target or not COUNTS:
        return
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    (path / "fuzz-counts.json").write_text(json.dumps({"counts": dict(COUNTS), "totals": totals()}, indent=2))


# Strategies -----------------------------------------------------------------------------

#: Characters a header value can carry through a WSGI server: anything but CR, LF and NUL
#: (RFC 9110 5.5; gunicorn refuses them), including non-ASCII text. The Django test
#: client passes any str through to the view, so non-latin-1 text is tried too.
header_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00")
header_text = st.text(header_chars, max_size=120)

#: Numbers a client might send where a non-negative integer is expected: small, at the
#: 64-bit edges, far past them (hundreds of digits), signs, spaces, exponents and
#: digits of other scripts.
_edge_numbers = st.sampled_from(
    [
        "0",
        "1",
        "00",
        "007",
        str(2**63 - 1),
        str(2**63),
        str(2**64),
        "9" * 19,
        "9" * 20,
        "9" * 400,
        "9" * 5000,
        "-0",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\t",
        "1.0",
        "1e3",
        "0x10",
        "١٢",  # Arabic-Indic digits
        "１２",  # fullwidth digits
        "²",
        "",
    ]
)
number_text = _edge_numbers | st.integers(min_value=-(2**70), max_value=2**70).map(str) | header_text
