"""Collector sources into Kafka: events/s over WebSocket and native Broker, and peak RSS.

Each sensor stand-in (the JSON v1 replay server, a Broker endpoint) runs in its own process and
sends generated heads; this process reads them through the real source and produces them to a
real Kafka (the project's development broker, started here) as the collector does: each batch
read becomes one `.v2` Arrow batch per sensor (`--topic-format v1`: Avro records). The stall
run points the producer at a Kafka that is not there, so the source's bounded queue and the
producer's bounded buffer are all that hold events; RSS must stay flat.
Usage: python bench/collector.py [--events N]. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
from pathlib import Path

from headbits.collector.zeek_event import DEFAULT_TOPIC, encode_event
from headbits.common.records import PayloadHead

TOPIC = "headbits.heads.v2"


def make_heads(count: int) -> list[PayloadHead]:
    return [
        PayloadHead(
            uid=f"C{i:016d}", ts=1.7e9 + i / 1000, sensor="bench", orig_h="10.1.2.3",
            orig_p=1024 + i % 60000, resp_h="10.9.8.7", resp_p=443, transport="tcp",
            services=("ssl",), orig_head=bytes((i + j) % 256 for j in range(64)),
            resp_head=bytes((7 * i + j) % 256 for j in range(64)), orig_bytes_seen=517,
            resp_bytes_seen=1400, orig_gap=False, resp_gap=False,
        )
        for i in range(count)
    ]


def websocket_sensor(count: int, ready) -> None:
    from headbits.devtools.zeek_replay import WebSocketReplayServer, data_messages

    async def main() -> None:
        server = WebSocketReplayServer(data_messages(make_heads(count), DEFAULT_TOPIC))
        listener = await server.serve("127.0.0.1", 0)
        ready.put(listener.sockets[0].getsockname()[1])
        await listener.serve_forever()

    asyncio.run(main())


def broker_sensor(count: int, ready) -> None:
    import broker

    from headbits.collector.sources.broker import BrokerTLS, from_typed, make_endpoint

    endpoint = make_endpoint(BrokerTLS(disable=True))
    ready.put(endpoint.listen("127.0.0.1", 0))
    events = [broker.Data(from_typed(encode_event(head))) for head in make_heads(count)]
    while not any(str(t) == DEFAULT_TOPIC for t in endpoint.peer_subscriptions()):
        time.sleep(0.05)
    for event in events:
        endpoint.publish(DEFAULT_TOPIC, event)
    time.sleep(3600)


# Spawned, not forked: a fork would copy the running Broker (CAF) and librdkafka threads' state.
SPAWN = multiprocessing.get_context("spawn")


def start_sensor(target, count: int) -> tuple[multiprocessing.Process, int]:
    ready = SPAWN.Queue()
    process = SPAWN.Process(target=target, args=(count, ready), daemon=True)
    process.start()
    return process, ready.get(timeout=600)


def produce(producer, codec, heads) -> None:
    """One read batch (a payload_head table) to Kafka as the collector writes it (`codec` None:
    `.v2` batches)."""
    if codec is not None:
        records = heads.to_pylist()
        producer.produce_many(TOPIC, codec.encode_many(records), [r["uid"] for r in records],
                              codec.headers)
        return
    from headbits.common.columnar import batch_schema, encode_batches

    for sensor, value, _ in encode_batches(heads, heads.column("sensor"), heads.num_rows):
        producer.produce(TOPIC, value, sensor, batch_schema("payload_head").headers)
    producer.poll(0)


def pump(source, producer, codec, count: int, timeout: float) -> tuple[int, float]:
    """Source -> Kafka in batches until `count` heads were produced and acknowledged.

    Without a producer it only reads and decodes: the source's own ceiling.
    """
    produced = 0
    started = None
    deadline = time.monotonic() + timeout
    while produced < count and time.monotonic() < deadline:
        heads = source.read_batch(5000, 0.2).heads
        if heads.num_rows and started is None:
            started = time.perf_counter()
        if producer is not None and heads.num_rows:
            produce(producer, codec, heads)
        produced += heads.num_rows
    if producer is not None:
        producer.flush(120)
    return produced, time.perf_counter() - (started or time.perf_counter())


def measure(kind: str, count: int, bootstrap: str | None, fmt: str = "v2") -> dict:
    from headbits.collector.sources.broker import BrokerSource, BrokerTLS
    from headbits.collector.sources.websocket import WebSocketSource
    from headbits.common.avro import ValueCodec
    from headbits.common.kafka import KafkaSettings, Producer

    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap)) if bootstrap else None
    if producer is not None:
        # A collector's producer lives on: its metadata and idempotence id come before the
        # clock, as they did not in the first runs of the 2 s default (a few % of the figure).
        producer.produce(TOPIC, b"warm-up", b"bench-warm-up")
        producer.flush(60)
    target = websocket_sensor if kind == "websocket" else broker_sensor
    process, port = start_sensor(target, count)
    if kind == "websocket":
        source = WebSocketSource(f"ws://127.0.0.1:{port}/v1/messages/json", "bench")
    else:
        source = BrokerSource("127.0.0.1", port, "bench", tls=BrokerTLS(disable=True))
    codec = ValueCodec("payload_head", TOPIC) if fmt == "v1" else None
    try:
        produced, seconds = pump(source, producer, codec, count, timeout=600)
    finally:
        source.close()
        process.terminate()
    rate = produced / seconds if seconds else 0.0
    where = "into Kafka" if bootstrap else "read and decoded (no Kafka)"
    label = f"{kind}_to_kafka" if bootstrap else f"{kind}_source_only"
    print(f"{kind}: {produced}/{count} heads {where} in {seconds:.2f} s = {rate:,.0f} events/s")
    return {f"{label}_events_per_s": round(rate), f"{label}_delivered": produced}


def stall_rss(count: int, results, buffer_kbytes: int | None = None, fmt: str = "v2") -> None:
    """WebSocket source + producer to an absent Kafka: the sensor must be held back, RSS flat.

    Runs in its own spawned process so that its peak RSS is the stalled collector's alone.
    """
    from headbits.collector.sources.websocket import WebSocketSource
    from headbits.common.avro import ValueCodec
    from headbits.common.kafka import KafkaSettings, Producer
    from headbits.common.kafka.producer import ProducerStalledError

    process, port = start_sensor(websocket_sensor, count)
    source = WebSocketSource(f"ws://127.0.0.1:{port}/v1/messages/json", "bench")
    overrides: dict = {"message.timeout.ms": 600_000}
    if buffer_kbytes:
        overrides["queue.buffering.max.kbytes"] = buffer_kbytes
    # A full buffer blocks produce, as it holds back the collector and through it the sensor;
    # here for at most 20 s, then the run ends.
    producer = Producer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), buffer_wait_seconds=20,
                        **overrides)
    codec = ValueCodec("payload_head", TOPIC) if fmt == "v1" else None
    accepted = 0
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            heads = source.read_batch(5000, 0.2).heads
            if heads.num_rows:
                produce(producer, codec, heads)
            accepted += heads.num_rows
    except ProducerStalledError:
        pass  # the buffer stayed full to the end: the bound held
    finally:
        source.close()
        process.terminate()
    # VmHWM, not ru_maxrss: a spawned child's ru_maxrss starts at its parent's RSS when it
    # forked (Linux keeps the largest across exec), here the earlier runs' hundreds of MB.
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(f"stall: sensor offered {count} heads; {accepted} accepted in 20 s while Kafka was "
          f"absent; peak RSS {peak:.0f} MB")
    label = f"stall_buffer_{buffer_kbytes}kb" if buffer_kbytes else "stall"
    results.put({f"{label}_offered": count, f"{label}_heads_accepted": accepted,
                 f"{label}_peak_rss_mb": round(peak)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--stall-buffer-kbytes", type=int, default=32_768,
                        help="librdkafka buffer of the second stall run (the first: defaults)")
    parser.add_argument("--topic-format", choices=("v2", "v1"), default="v2")
    args = parser.parse_args()
    from headbits.devtools import kafka_broker

    figures: dict = {"events": args.events, "topic_format": args.topic_format,
                     "cpus": os.cpu_count(),
                     "load_average_1min": os.getloadavg()[0]}
    figures |= measure("websocket", args.events, None)
    figures |= measure("broker", min(args.events, 100_000), None)
    from headbits.common.kafka import KafkaSettings, ensure_topics

    kafka = kafka_broker.start()
    try:
        ensure_topics(KafkaSettings(bootstrap_servers=kafka.bootstrap_servers), [TOPIC])
        figures |= measure("websocket", args.events, kafka.bootstrap_servers, args.topic_format)
        figures |= measure("broker", min(args.events, 100_000), kafka.bootstrap_servers,
                           args.topic_format)
    finally:
        kafka.stop()
    for buffer_kbytes in (None, args.stall_buffer_kbytes):
        results = SPAWN.Queue()
        stalled = SPAWN.Process(target=stall_rss,
                                args=(600_000, results, buffer_kbytes, args.topic_format))
        stalled.start()
        figures |= results.get(timeout=900)
        stalled.join()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
