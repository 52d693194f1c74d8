"""The Zeek package: every script parses (zeekscript), and the event it declares is the one the
collector decodes. Zeek itself cannot run here, so names are checked against the docs by hand
(zeek/README.md lists them); this catches syntax errors and drift between script and decoder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zeekscript

from headbits.collector.zeek_event import ARGUMENTS, DEFAULT_TOPIC, EVENT_NAME

ZEEK_DIR = Path(__file__).resolve().parents[1] / "zeek"
SCRIPTS = sorted(ZEEK_DIR.rglob("*.zeek"))


def test_package_layout() -> None:
    assert (ZEEK_DIR / "zkg.meta").is_file()
    assert "script_dir = scripts" in (ZEEK_DIR / "zkg.meta").read_text()
    assert (ZEEK_DIR / "scripts" / "__load__.zeek").is_file()
    assert (ZEEK_DIR / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ZEEK_DIR)))
def test_script_parses(script: Path) -> None:
    parsed = zeekscript.Script(script)
    assert parsed.parse(), f"{script}: {parsed.get_error()}"
    assert not parsed.has_error()


def test_zeekscript_rejects_a_broken_script(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zeek"
    broken.write_text("event zeek_init()\n\t{\n\tif ( ! x\n\t}\n")
    assert not zeekscript.Script(broken).parse()


def _declared_event() -> tuple[str, list[str]]:
    text = (ZEEK_DIR / "scripts" / "main.zeek").read_text()
    module = re.search(r"^module (\w+);", text, re.M).group(1)
    match = re.search(r"global (\w+): event\(([^)]*)\)", text)
    names = [part.split(":")[0].strip() for part in match.group(2).split(",")]
    return f"{module}::{match.group(1)}", names


def test_script_event_matches_decoder() -> None:
    name, arguments = _declared_event()
    assert name == EVENT_NAME
    assert arguments == [argument for argument, _ in ARGUMENTS]


def test_script_topic_matches_collector_default() -> None:
    text = (ZEEK_DIR / "scripts" / "main.zeek").read_text()
    assert f'option topic = "{DEFAULT_TOPIC}";' in text
