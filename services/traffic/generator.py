"""Run plans through real servers behind recording relays and turn each flow into a PayloadHead.

One server and one relay per protocol (and transport) serve all of its sessions, one session at
a time, so each session's flows are exactly the flows the relay finished meanwhile.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import string
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from headbits.common.records import PayloadHead
from headbits.traffic import noise
from headbits.traffic.base import TrafficProtocol
from headbits.traffic.registry import PROTOCOLS, TRAFFIC
from headbits.traffic.relay import Flow, random_loopback_host, relay

SENSOR = "generated"
_UID_ALPHABET = string.digits + string.ascii_letters


class GenerationError(RuntimeError):
    """A session failed; the message names the protocol, the session and its plan."""


@dataclass(frozen=True)
class Anomaly:
    """A real protocol served where the port promises another one, and Zeek confirmed nothing."""

    protocol: TrafficProtocol
    port: int


ANOMALIES: tuple[Anomaly, ...] = (
    Anomaly(TRAFFIC["ssh"], 443),
    Anomaly(TRAFFIC["http"], 53),
    Anomaly(noise.PROTOCOL, 80),
    Anomaly(TRAFFIC["tls"], 22),
)
"""The anomalous flows `generate_anomalies` makes, in the order it cycles through them."""


def new_uid() -> str:
    """"G" and 16 base62 characters: Zeek-like, and never equal to a Zeek uid ("C...")."""
    return "G" + "".join(secrets.choice(_UID_ALPHABET) for _ in range(16))


def head_from_flow(flow: Flow, services: tuple[str, ...]) -> PayloadHead:
    return PayloadHead(
        uid=new_uid(),
        ts=flow.ts,
        sensor=SENSOR,
        orig_h=flow.orig_h,
        orig_p=flow.orig_p,
        resp_h=flow.resp_h,
        resp_p=flow.resp_p,
        transport=flow.transport,
        services=services,
        orig_head=bytes(flow.orig.head),
        resp_head=bytes(flow.resp.head),
        orig_bytes_seen=flow.orig.bytes_seen,
        resp_bytes_seen=flow.resp.bytes_seen,
        orig_gap=False,
        resp_gap=False,
    ).validate()


def plan_sessions(
    protocol: TrafficProtocol, count: int, seed: int, purpose: str = "normal"
) -> list[Any]:
    """The sessions a run with this seed asks for: the reproducible part of a run."""
    rng = random.Random(f"{seed}/{purpose}/{protocol.name}/plan")
    return [protocol.plan(rng) for _ in range(count)]


def run_sessions(
    protocol: TrafficProtocol,
    plans: Sequence[Any],
    *,
    seed: int = 0,
    port: int | None = None,
    services: tuple[str, ...] | None = None,
    after_session: Callable[[], object] = lambda: None,
) -> list[tuple[PayloadHead, object]]:
    """Each plan's flows as (head, what the client observed), in plan order.

    `port` overrides the relay's preferred port and `services` the Zeek services recorded,
    which is how anomalies are made from the same real protocols.
    """
    services = protocol.services if services is None else services
    host = random_loopback_host(random.Random(secrets.randbits(64)))
    results: list[tuple[PayloadHead, object]] = []
    with protocol.serve(random.Random(f"{seed}/{protocol.name}/serve")) as upstreams, \
            contextlib.ExitStack() as stack:
        relays = {
            transport: stack.enter_context(relay(transport, upstream, host, port or protocol.port))
            for transport, upstream in upstreams.items()
        }
        for index, session in enumerate(plans):
            target = relays[session.transport]
            try:
                observed = protocol.talk(session, target.address)
                flows = target.collect()
            except Exception as error:
                raise GenerationError(
                    f"{protocol.name} session {index} failed: {error!r}; plan: {session}"
                ) from error
            if not flows:
                raise GenerationError(
                    f"{protocol.name} session {index} made no connection through the relay; "
                    f"plan: {session}"
                )
            results.extend((head_from_flow(flow, services), observed) for flow in flows)
            after_session()
    return results


def _progress_bar(total: int, enabled: bool, unit: str) -> tqdm:
    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit=unit)


def generate(
    protocols: Sequence[str] | None = None,
    sessions_per_protocol: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> list[PayloadHead]:
    """Labelled heads of real sessions of each protocol (all of `PROTOCOLS` by default)."""
    chosen = list(PROTOCOLS if protocols is None else protocols)
    unknown = sorted(set(chosen) - set(TRAFFIC))
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {', '.join(PROTOCOLS)}")
    heads: list[PayloadHead] = []
    with _progress_bar(len(chosen) * sessions_per_protocol, progress, "session") as bar:
        for name in chosen:
            bar.set_description(name)
            protocol = TRAFFIC[name]
            plans = plan_sessions(protocol, sessions_per_protocol, seed)
            results = run_sessions(protocol, plans, seed=seed, after_session=bar.update)
            heads.extend(head for head, _ in results)
    return heads


def generate_anomalies(sessions: int = 10, seed: int = 0) -> list[PayloadHead]:
    """Heads of real protocols on ports that promise another one, with services=().

    Cycles through `ANOMALIES`, so every kind appears once sessions >= len(ANOMALIES).
    """
    heads: list[PayloadHead] = []
    for offset, anomaly in enumerate(ANOMALIES):
        count = len(range(offset, sessions, len(ANOMALIES)))
        if count == 0:
            continue
        plans = plan_sessions(anomaly.protocol, count, seed, purpose="anomaly")
        results = run_sessions(
            anomaly.protocol, plans, seed=seed, port=anomaly.port, services=()
        )
        heads.extend(head for head, _ in results)
    return heads
