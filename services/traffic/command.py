"""Generate labelled PayloadHeads from real protocol implementations talking over loopback.

Each protocol runs a real server and client (TLS 1.2/1.3, HTTP/1.1, DNS over UDP and TCP, SSH,
SMTP, FTP, WebSocket, gRPC over HTTP/2, Modbus/TCP) through a recording relay on the protocol's
well-known port of a random 127.x.y.z address (an ephemeral port when that cannot be bound).
The heads are written as an Avro container file of headbits.heads.v1 records. `--anomalies K`
adds K flows of real protocols on ports that promise another one, with no Zeek service.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from headbits.common.avro import write_heads_file
from headbits.common.settings import (
    SettingsError,
    add_settings_arguments,
    setting,
    settings_from_args,
)
from headbits.traffic.generator import GenerationError, generate, generate_anomalies
from headbits.traffic.registry import PROTOCOLS


@dataclass(frozen=True)
class GenerateSettings:
    out: Path = setting(Path("generated-heads.avro"), "Avro file to write the heads to")
    sessions_per_protocol: int = setting(50, "sessions to run for each protocol")
    protocols: tuple[str, ...] = setting(PROTOCOLS, "protocols to generate")
    seed: int = setting(0, "seed of what clients ask (names, offers, paths)")
    anomalies: int = setting(0, "anomalous flows to add (real protocols on other ports)")


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, GenerateSettings)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(GenerateSettings, args)
    unknown = sorted(set(settings.protocols) - set(PROTOCOLS))
    if unknown:
        raise SettingsError(f"--protocols: unknown {unknown}; choose from {','.join(PROTOCOLS)}")
    try:
        heads = generate(settings.protocols, settings.sessions_per_protocol, settings.seed,
                         progress=not args.quiet)
        anomalies = generate_anomalies(settings.anomalies, settings.seed)
    except GenerationError as error:
        print(f"headbits generate: {error}", file=sys.stderr)
        return 1
    count = write_heads_file(settings.out, heads + anomalies)
    print(f"wrote {count} heads ({len(anomalies)} anomalous) to {settings.out}", file=sys.stderr)
    return 0
