"""What the Zeek package costs a real Zeek: per-packet overhead apart from start-up.

Usage: python bench/zeek.py [--zeek-home DIR] [--corpus DIR] [--repeat 3]

The capture corpus's Ethernet pcap files are merged with `mergecap` into one large capture in a
temporary folder. Zeek (default scripts, `-C`) reads it, and a one-connection capture, with and
without the package (its WebSocket listener on, as deployed, and a script that stops Zeek at the
end of the file, since a listening Zeek keeps running). CPU time (user + system) of the best of
`--repeat` runs is used, because the machine may be shared; wall time is printed too.

    startup_ms      = package run - plain run, on the one-connection capture
    overhead_ratio  = (package run - its start-up) / (plain run - its start-up), large capture
                      (1.15 means the package adds 15 % to Zeek's own per-packet work)

A separate, untimed run counts the package's script events (stream_deliver, stream_undelivered,
udp_contents) per connection with payload. The last line printed is one JSON object.
Zeek is found at --zeek-home, else $HEADBITS_ZEEK_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zeek" / "scripts"
SMALL_CAPTURE = ROOT / "zeek" / "tests" / "Traces" / "get-gzip.pcap"
LINKTYPE_ETHERNET = 1
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}

STOP_AT_END = "event Pcap::file_done(path: string) { terminate(); }\n"
COUNT_EVENTS = """
global events = 0;
global per_connection: table[string] of count &default=0;
function seen(uid: string) { ++events; ++per_connection[uid]; }
event stream_deliver(c: connection, is_orig: bool, data: string) { seen(c$uid); }
event stream_undelivered(c: connection, is_orig: bool, seq: count, len: count) { seen(c$uid); }
event udp_contents(u: connection, is_orig: bool, contents: string) { seen(u$uid); }
event zeek_done()
	{
	local most = 0;
	for ( _, n in per_connection )
		if ( n > most )
			most = n;
	print fmt("EVENTS %d %d %d", events, |per_connection|, most);
	}
"""


def zeek_env(home: Path) -> dict[str, str]:
    share = home / "share" / "zeek"
    env = dict(os.environ)
    env["ZEEKPATH"] = ":".join(str(p) for p in (".", share, share / "policy", share / "site",
                                                share / "builtin-plugins"))
    env["ZEEK_PLUGIN_PATH"] = str(home / "lib" / "zeek" / "plugins")
    return env


def ethernet_pcaps(corpus: Path) -> list[Path]:
    """Classic pcap files with Ethernet framing (mergecap can only merge one link type into a
    file libpcap reads)."""
    found = []
    for path in sorted(corpus.rglob("*.pcap")):
        with path.open("rb") as stream:
            header = stream.read(24)
        if len(header) == 24 and header[:4] in PCAP_MAGICS:
            little = header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
            (linktype,) = struct.unpack("<I" if little else ">I", header[20:24])
            if linktype == LINKTYPE_ETHERNET:
                found.append(path)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, stdout) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=1800, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): "
                         f"{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, result.stdout


def best(command: list[str], env: dict[str, str], cwd: Path, repeat: int) -> tuple[float, float]:
    runs = [timed(command, env, cwd)[:2] for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zeek-home", type=Path, default=os.environ.get("HEADBITS_ZEEK_HOME"))
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "pcaps")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.zeek_home or not (Path(args.zeek_home) / "bin" / "zeek").is_file():
        sys.exit("no Zeek: pass --zeek-home or set HEADBITS_ZEEK_HOME to an unpacked Zeek")
    if shutil.which("mergecap") is None:
        sys.exit("mergecap is missing: apt-get install wireshark-common (or tshark)")
    zeek = str(Path(args.zeek_home) / "bin" / "zeek")
    env = zeek_env(Path(args.zeek_home))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = ethernet_pcaps(args.corpus)
        merged = work / "merged.pcap"
        subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), *map(str, inputs)],
                       check=True, capture_output=True)
        (work / "stop.zeek").write_text(STOP_AT_END)
        (work / "count.zeek").write_text(COUNT_EVENTS)
        port = free_port()
        package = [str(PACKAGE), str(work / "stop.zeek"), f"HeadBits::websocket_port={port}/tcp"]

        def run(capture: Path, extra: list[str]) -> tuple[float, float]:
            return best([zeek, "-C", "-r", str(capture), *extra], env, work, args.repeat)

        plain_small, plain_small_wall = run(SMALL_CAPTURE, [])
        pkg_small, pkg_small_wall = run(SMALL_CAPTURE, package)
        plain_large, plain_large_wall = run(merged, [])
        pkg_large, pkg_large_wall = run(merged, package)
        _, _, counted = timed([zeek, "-C", "-r", str(merged), *package, str(work / "count.zeek")],
                              env, work)
        events, connections, most = (int(v) for v in counted.split("EVENTS")[-1].split())
        info = subprocess.run(["capinfos", "-M", "-c", "-T", str(merged)], check=True,
                              capture_output=True, text=True).stdout.split()
        packets = int(info[-1])
        size = merged.stat().st_size

    startup = pkg_small - plain_small
    overhead = (pkg_large - pkg_small) / (plain_large - plain_small)
    figures = {
        "captures_merged": len(inputs),
        "merged_bytes": size,
        "packets": packets,
        "plain_cpu_s": round(plain_large, 3),
        "package_cpu_s": round(pkg_large, 3),
        "plain_wall_s": round(plain_large_wall, 3),
        "package_wall_s": round(pkg_large_wall, 3),
        "plain_startup_cpu_s": round(plain_small, 3),
        "package_startup_cpu_s": round(pkg_small, 3),
        "startup_wall_delta_ms": round((pkg_small_wall - plain_small_wall) * 1000, 1),
        "script_events": events,
        "connections_with_events": connections,
        "events_per_connection": round(events / max(connections, 1), 2),
        "max_events_one_connection": most,
        "startup_ms": round(startup * 1000, 1),
        "overhead_ratio": round(overhead, 3),
        "target_overhead_ratio": 1.15,
        "target_startup_ms": 50,
    }
    print(f"Zeek {len(inputs)} captures merged ({size / 1e6:.1f} MB): plain {plain_large:.2f} s "
          f"CPU, with package {pkg_large:.2f} s; start-up {plain_small * 1000:.0f} ms plain, "
          f"{pkg_small * 1000:.0f} ms with package")
    print(f"{events} package script events over {connections} connections "
          f"(mean {events / max(connections, 1):.1f}, max {most})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
