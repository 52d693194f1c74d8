"""Zeek's heads against the project's own reassembly (`read_capture`, what `headbits replay`
sends), byte for byte and flag for flag, on the shared captures.

Zeek runs each capture with the package; the heads it would publish are read through the
package's publish_policy hook (tests/zeek/dump.zeek; the live tests check that the wire carries
exactly these). Every head falls into one class of `compare_heads`; zeek/README.md explains each
class, and the counts here are the documented ones, so any change in either reassembly shows.
The default run covers 35 SSH, DNS, HTTP and TLS captures; the whole corpus (1,145 captures,
several minutes) runs with `pytest -m zeek_corpus`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.zeek_support import compare_heads, dump_heads, project_heads, require_zeek

pytestmark = pytest.mark.shared_data

SUBSET = {"zeek-traces/ssh": None, "zeek-traces/dns": None, "zeek-traces/http": 6,
          "zeek-traces/tls": 6}
SUBSET_OUTCOME = {"identical": 78, "zeek_split": 11, "bytes_differ": 4, "project_only": 3,
                  "roles_swapped": 2}

CORPUS_OUTCOME = {"identical": 7814, "zeek_split": 641, "project_gap_only": 2,
                  "project_only": 151, "bytes_differ": 106, "zeek_only": 91,
                  "roles_swapped": 64, "gap_differs": 10}
CORPUS_UNREADABLE = 1
"""zeek-traces/ldap/gap-data-missing.pcapng: libpcap refuses its second interface."""


def subset_captures(shared_pcaps: Path) -> list[Path]:
    found = []
    for folder, limit in SUBSET.items():
        found += sorted(p for p in (shared_pcaps / folder).iterdir()
                        if p.suffix in (".pcap", ".pcapng"))[:limit]
    return found


def outcome_of(captures: list[Path], tmp_path: Path) -> tuple[Counter[str], int]:
    zeek = require_zeek()
    total: Counter[str] = Counter()
    unreadable = 0
    for capture in captures:
        try:
            heads = dump_heads(zeek, capture, tmp_path)
        except AssertionError as error:
            if "failed to read a packet" not in str(error):
                raise
            unreadable += 1
            continue
        total.update(compare_heads(heads, project_heads(capture)))
    return total, unreadable


def test_heads_match_project_reassembly_on_a_subset(shared_pcaps: Path, tmp_path: Path) -> None:
    captures = subset_captures(shared_pcaps)
    assert len(captures) == 35
    outcome, unreadable = outcome_of(captures, tmp_path)
    assert unreadable == 0
    assert dict(outcome) == SUBSET_OUTCOME


@pytest.mark.zeek_corpus
def test_heads_match_project_reassembly_on_the_corpus(shared_pcaps: Path, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    if "zeek_corpus" not in (request.config.getoption("-m") or ""):
        pytest.skip("the whole corpus takes several minutes: run with -m zeek_corpus")
    captures = sorted(p for p in shared_pcaps.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    outcome, unreadable = outcome_of(captures, tmp_path)
    assert unreadable == CORPUS_UNREADABLE
    assert dict(outcome) == CORPUS_OUTCOME


def test_compare_heads_classes() -> None:
    """The classifier itself, on hand-made heads."""
    base = ("tcp", "10.0.0.1", 40000, "10.0.0.2", 80, b"GET /", b"HTTP/1.1", False, False)
    swapped = ("tcp", "10.0.0.2", 80, "10.0.0.1", 40000, b"HTTP/1.1", b"GET /", False, False)
    gap = (*base[:7], True, False)
    other_bytes = (*base[:5], b"POST /", b"HTTP/1.1", False, False)
    udp = ("udp", "10.0.0.1", 5000, "10.0.0.3", 53, b"q", b"a", False, False)
    assert compare_heads([base], [base]) == Counter(identical=1)
    assert compare_heads([swapped], [base]) == Counter(roles_swapped=1)
    assert compare_heads([base], [gap]) == Counter(project_gap_only=1)
    assert compare_heads([gap], [base]) == Counter(gap_differs=1)
    assert compare_heads([other_bytes], [base]) == Counter(bytes_differ=1)
    assert compare_heads([base, other_bytes], [base]) == Counter(identical=1, zeek_split=1)
    assert compare_heads([udp], [base]) == Counter(zeek_only=1, project_only=1)
