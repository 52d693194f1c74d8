"""Labelled training traffic from real protocol implementations talking over loopback.

Each protocol runs a real server and a real client (see `registry.PROTOCOLS`); a recording relay
between them captures each direction's first bytes as a Zeek sensor would. Runs are seeded:
the same seed asks the same questions (names, offers, paths); nonces and keys still differ.
"""

from headbits.traffic.generator import ANOMALIES, generate, generate_anomalies
from headbits.traffic.registry import PROTOCOLS

__all__ = ["ANOMALIES", "PROTOCOLS", "generate", "generate_anomalies"]
