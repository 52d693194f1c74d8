"""What the Zeek package costs a real Zeek: per-packet overhead apart from start-up.

Usage: python bench/zeek.py [--zeek-home DIR] [--corpus DIR] [--rounds 5] [--package DIR]
                           [--instructions]

The capture corpus's Ethernet pcap files are merged with `mergecap` into one large capture in a
temporary folder. Zeek (default scripts, `-C`) reads it, and a one-connection capture, with and
without the package (its WebSocket listener on, as deployed, and a script that stops Zeek at the
end of the file, since a listening Zeek keeps running). CPU time (user + system) is used.

The machine may be shared, so one figure from a few runs means little: every round runs all
four commands back to back (in an order that alternates between rounds, so a slow spell hits
both sides alike), each round gives its own figures, and the medians over `--rounds` rounds are
reported, with the range and the load average before and after.

    startup_ms      = package run - plain run, on the one-connection capture
    overhead_ratio  = (package run - its start-up) / (plain run - its start-up), large capture
                      (1.15 means the package adds 15 % to Zeek's own per-packet work)

With `--instructions` the four commands also run once each under valgrind's callgrind, which
counts the instructions Zeek executes (all its threads, not the kernel's work): a figure the
machine's load does not move, `overhead_ratio_instructions` (same formula), at the price of
about a quarter of an hour on an idle core.

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
import statistics
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


def instructions(command: list[str], env: dict[str, str], cwd: Path) -> int:
    """Instructions one run executes, counted by callgrind."""
    result = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cwd}/cg.out",
                             *command], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=7200, check=False)
    if result.returncode != 0:
        raise SystemExit(f"callgrind failed on {' '.join(command)}: {result.stderr[-2000:]}")
    (cwd / "cg.out").unlink()
    return int(result.stderr.split("Collected :")[-1].split()[0])


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def summary(values: list[float], digits: int) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zeek-home", type=Path, default=os.environ.get("HEADBITS_ZEEK_HOME"))
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "pcaps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--package", type=Path, default=PACKAGE,
                        help="the package's scripts folder (to compare a variant)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions with valgrind (load-independent, slow)")
    args = parser.parse_args()
    if not args.zeek_home or not (Path(args.zeek_home) / "bin" / "zeek").is_file():
        sys.exit("no Zeek: pass --zeek-home or set HEADBITS_ZEEK_HOME to an unpacked Zeek")
    if args.instructions and shutil.which("valgrind") is None:
        sys.exit("valgrind is missing: apt-get install valgrind (or drop --instructions)")
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
        package = [str(args.package), str(work / "stop.zeek"),
                   f"HeadBits::websocket_port={port}/tcp"]

        commands = {
            "plain_small": [zeek, "-C", "-r", str(SMALL_CAPTURE)],
            "package_small": [zeek, "-C", "-r", str(SMALL_CAPTURE), *package],
            "plain_large": [zeek, "-C", "-r", str(merged)],
            "package_large": [zeek, "-C", "-r", str(merged), *package],
        }
        load_before = load_average()
        rounds: list[dict[str, tuple[float, float]]] = []
        for number in range(args.rounds):
            order = list(commands) if number % 2 == 0 else list(reversed(commands))
            rounds.append({name: timed(commands[name], env, work)[:2] for name in order})
        load_after = load_average()
        counts = ({name: instructions(command, env, work) for name, command in commands.items()}
                  if args.instructions else None)
        _, _, counted = timed([zeek, "-C", "-r", str(merged), *package, str(work / "count.zeek")],
                              env, work)
        events, connections, most = (int(v) for v in counted.split("EVENTS")[-1].split())
        info = subprocess.run(["capinfos", "-M", "-c", "-T", str(merged)], check=True,
                              capture_output=True, text=True).stdout.split()
        packets = int(info[-1])
        size = merged.stat().st_size

    cpu = {name: [r[name][0] for r in rounds] for name in commands}
    wall = {name: [r[name][1] for r in rounds] for name in commands}
    startups = [(r["package_small"][0] - r["plain_small"][0]) * 1000 for r in rounds]
    ratios = [(r["package_large"][0] - r["package_small"][0])
              / (r["plain_large"][0] - r["plain_small"][0]) for r in rounds]
    plain_large = statistics.median(cpu["plain_large"])
    pkg_large = statistics.median(cpu["package_large"])
    plain_small = statistics.median(cpu["plain_small"])
    pkg_small = statistics.median(cpu["package_small"])
    figures = {
        "captures_merged": len(inputs),
        "merged_bytes": size,
        "packets": packets,
        "rounds": len(rounds),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "plain_cpu_s": summary(cpu["plain_large"], 3),
        "package_cpu_s": summary(cpu["package_large"], 3),
        "plain_wall_s": summary(wall["plain_large"], 3),
        "package_wall_s": summary(wall["package_large"], 3),
        "plain_startup_cpu_s": summary(cpu["plain_small"], 3),
        "package_startup_cpu_s": summary(cpu["package_small"], 3),
        "startup_ms_range": summary(startups, 1),
        "overhead_ratio_range": summary(ratios, 3),
        "script_events": events,
        "connections_with_events": connections,
        "events_per_connection": round(events / max(connections, 1), 2),
        "max_events_one_connection": most,
        **({} if counts is None else {
            "instructions": counts,
            "startup_instructions_added": counts["package_small"] - counts["plain_small"],
            "overhead_ratio_instructions": round(
                (counts["package_large"] - counts["package_small"])
                / (counts["plain_large"] - counts["plain_small"]), 3)}),
        "startup_ms": round(statistics.median(startups), 1),
        "overhead_ratio": round(statistics.median(ratios), 3),
        "target_overhead_ratio": 1.15,
        "target_startup_ms": 50,
    }
    print(f"Zeek {len(inputs)} captures merged ({size / 1e6:.1f} MB), medians of {len(rounds)} "
          f"rounds: plain {plain_large:.2f} s CPU, with package {pkg_large:.2f} s; start-up "
          f"{plain_small * 1000:.0f} ms plain, {pkg_small * 1000:.0f} ms with package; load "
          f"average {load_before} before, {load_after} after")
    print(f"{events} package script events over {connections} connections "
          f"(mean {events / max(connections, 1):.1f}, max {most})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
