"""The Zeek package in the real Zeek: its btest suite, and `zkg install` from a clone.

zkg installs only from a git repository with zkg.meta at its top and names the package after
the repository's folder, so the test makes a clone-like repository called `headbits` holding the
files a clone of the project has (zkg.meta and zeek/), installs it with the real zkg (which
runs the btest suite first, as `test_command` says), and then `@load packages/headbits` in Zeek.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.zeek_support import PROJECT_ROOT, require_zeek, zeek_env

BIN = Path(sys.executable).parent


def tool_env(zeek_home: Path) -> dict[str, str]:
    """Zeek's variables, with Zeek and this environment's btest and zkg first on PATH."""
    env = zeek_env(zeek_home)
    env["PATH"] = os.pathsep.join([str(zeek_home / "bin"), str(BIN), env.get("PATH", "")])
    return env


def test_btest_suite_passes(tmp_path: Path) -> None:
    zeek = require_zeek()
    tests = tmp_path / "tests"
    shutil.copytree(PROJECT_ROOT / "zeek" / "tests", tests, ignore=shutil.ignore_patterns(".tmp"))
    (tmp_path / "scripts").symlink_to(PROJECT_ROOT / "zeek" / "scripts")
    result = subprocess.run([str(BIN / "btest"), "-d"], cwd=tests, env=tool_env(zeek.home),
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 4 tests successful" in result.stderr


def test_zkg_installs_from_a_clone(tmp_path: Path) -> None:
    zeek = require_zeek()
    repo = tmp_path / "headbits"
    repo.mkdir()
    shutil.copy(PROJECT_ROOT / "zkg.meta", repo)
    shutil.copytree(PROJECT_ROOT / "zeek", repo / "zeek", ignore=shutil.ignore_patterns(".tmp"))
    git = ["git", "-c", "user.email=test@example.org", "-c", "user.name=test"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "package"]):
        subprocess.run([*git, *command], cwd=repo, check=True, capture_output=True)
    config = tmp_path / "zkg.cfg"
    config.write_text("[sources]\n[paths]\n" + "".join(
        f"{name} = {tmp_path / name}\n" for name in ("state_dir", "script_dir", "plugin_dir",
                                                    "bin_dir")))
    env = tool_env(zeek.home)
    install = subprocess.run([str(BIN / "zkg"), "--configfile", str(config), "install",
                              "--force", str(repo)], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "Running unit tests" in install.stdout
    assert (tmp_path / "script_dir" / "packages" / "headbits" / "main.zeek").is_file()

    env["ZEEKPATH"] += os.pathsep + str(tmp_path / "script_dir")
    (tmp_path / "site.zeek").write_text(
        "@load packages/headbits\n"
        "redef HeadBits::listen_websocket = F;\n"
        "hook HeadBits::publish_policy(c: connection, orig_head: string, resp_head: string,\n"
        "    orig_gap: bool, resp_gap: bool) { print orig_head[:9], resp_head[:15]; }\n")
    trace = PROJECT_ROOT / "zeek" / "tests" / "Traces" / "get-gzip.pcap"
    run = subprocess.run([str(zeek.binary), "-C", "-r", str(trace), str(tmp_path / "site.zeek")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["GET /gzip, HTTP/1.1 200 OK"]
