"""A development server run as a child process on a loopback port: start it, wait until it
listens, stop it. The object-store stand-ins share this; what each serves is its own module's."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (a child binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_listening(command: Sequence[str], host: str, port: int, what: str,
                    timeout: float = 30.0, env: dict[str, str] | None = None,
                    ) -> subprocess.Popen:
    """`command` as a child process, returned once it accepts connections on host:port;
    RuntimeError naming `what` if it exits or does not listen within `timeout`."""
    process = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 0.5).close()
            return process
        except OSError as error:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"{what} did not listen on {host}:{port}") from error
            time.sleep(0.1)


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

