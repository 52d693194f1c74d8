"""The seam every generated protocol fills: a real server, a plan of what to ask, a real client.

A plan is a frozen dataclass with a `transport` field ("tcp" or "udp"); the rest is what that
protocol's clients vary. `plan(rng)` must draw everything from `rng` so a seed reproduces the
plans; `serve(rng)` may vary what servers vary (banners, versions) the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

Address = tuple[str, int]


@dataclass(frozen=True)
class TrafficProtocol:
    """One protocol the generator can produce.

    name: this project's protocol name for the generator (see `registry.PROTOCOLS`).
    port: the IANA port its relay tries to listen on, so the port expectation matches.
    services: what Zeek's analyzers would log in `conn.log`'s service field for such a flow.
    serve(rng): context manager running the real server(s); yields {transport: address}.
    plan(rng): one session's plan, drawn from rng.
    talk(plan, address): runs the real client against address (the relay) to the end of the
        session and closes its connection; returns what the client observed (used by tests).
    """

    name: str
    port: int
    services: tuple[str, ...]
    serve: Callable[[random.Random], AbstractContextManager[dict[str, Address]]]
    plan: Callable[[random.Random], Any]
    talk: Callable[[Any, Address], object]
