"""The Zeek package without Zeek: zkg.meta, every script parses with zeekscript, and the event
it declares is the one the collector decodes. zeekscript accepts some lines Zeek rejects (it
parsed `! in_subnets(` that Zeek reads as `!in`), so the real Zeek runs the package in
test_zeek_package.py and test_zeek_live.py; these checks catch drift between script and
decoder even where no Zeek is installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zeekscript

from headbits.collector.zeek_event import ARGUMENTS, DEFAULT_TOPIC, EVENT_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ZEEK_DIR = PROJECT_ROOT / "zeek"
SCRIPTS = sorted((ZEEK_DIR / "scripts").rglob("*.zeek"))


def test_package_layout() -> None:
    """zkg wants zkg.meta at the top of the git repository it installs from."""
    meta = (PROJECT_ROOT / "zkg.meta").read_text()
    assert "script_dir = zeek/scripts" in meta
    assert "test_command = cd zeek/tests && btest -d" in meta
    assert "depends = zeek >=7.2.0" in meta
    assert "version =" not in meta
    assert (ZEEK_DIR / "scripts" / "__load__.zeek").is_file()
    assert (ZEEK_DIR / "tests" / "btest.cfg").is_file()
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
