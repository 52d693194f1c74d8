"""What the development Java servers (Kafka, the schema registry) share: Maven, Java, ports, stop.

Each server is fetched or built once with Maven into its own cache folder outside the work tree,
started detached on a free loopback port and stopped with SIGTERM (SIGKILL after a timeout).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class DevToolError(RuntimeError):
    """A development server could not be fetched, built, started or reached; the message says
    why."""


def find_java(needed_by: str, error: type[DevToolError] = DevToolError) -> str:
    """The `java` executable on PATH, or `error` naming what needs it."""
    found = shutil.which("java")
    if found is None:
        raise error(f"java is not on PATH: {needed_by} needs Java 17 or newer")
    return found


def maven(
    pom: Path, local_repo: Path, goals: list[str], what: str, quiet: bool = True,
    error: type[DevToolError] = DevToolError,
) -> None:
    """Run Maven on `pom` with its own local repository; a failure raises `error` with Maven's
    last output, which names the artifact it could not resolve."""
    if shutil.which("mvn") is None:
        raise error("mvn is not on PATH: install Maven (apt-get install maven) and Java 17")
    command = [
        "mvn", "-B", *(["-q"] if quiet else []), "-f", str(pom),
        f"-Dmaven.repo.local={local_repo}", *goals,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise error(f"Maven could not {what}:\n{tail}")


def is_alive(pid: int) -> bool:
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def reap(pid: int, block: bool = False) -> None:
    """Collect our child's exit status so it does not linger as a zombie (no-op otherwise)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0 if block else os.WNOHANG)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM (the servers' clean shutdown), SIGKILL if it is still running after `timeout`."""
    if not is_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_alive(pid):
        os.kill(pid, signal.SIGKILL)
        reap(pid, block=True)


@dataclass
class JavaServer:
    """A running development Java server (the Kafka broker, the schema registry): its process
    and the files it was started with."""

    pid: int
    run_dir: Path
    version: str

    def is_alive(self) -> bool:
        return is_alive(self.pid)

    def stop(self, timeout: float = 30.0, remove: bool = True) -> None:
        """SIGTERM (the server's clean shutdown), SIGKILL after `timeout`, then remove its
        files."""
        terminate(self.pid, timeout)
        if remove:
            shutil.rmtree(self.run_dir, ignore_errors=True)
