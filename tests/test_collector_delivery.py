"""The collector's deliveries against the real broker: acknowledgements counted, failures seen
while the source still flows (they were once checked only at exit, in an unbounded list)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka.admin import NewTopic

from headbits.collector.service import CollectorSettings, collect
from headbits.collector.sources.base import EndOfSource, Source, SourceItem
from headbits.common.kafka import DeliveryFailedError, admin
from headbits.common.service import Runtime
from headbits.devtools.harness import read_topic
from tests.source_helpers import make_heads

pytestmark = pytest.mark.kafka


class CountingSource(Source):
    """`limit` heads (None: without end), a batch per read; counts what it handed out."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.given = 0

    def read(self, max_items: int, timeout: float) -> list[SourceItem]:
        if self.limit is not None and self.given >= self.limit:
            raise EndOfSource("done")
        count = max_items if self.limit is None else min(max_items, self.limit - self.given)
        heads = make_heads(count, start=self.given)
        self.given += count
        return heads

    def close(self) -> None:
        """Nothing to release."""


def collector_runtime(bootstrap: str, **topic_config: str) -> Runtime:
    tag = uuid.uuid4().hex[:8]
    settings = CollectorSettings(
        bootstrap_servers=bootstrap, heads_topic=f"{tag}.heads",
        deadletter_topic=f"{tag}.deadletter", metrics_port=-1, batch_size=500,
    )
    client = admin(settings)
    futures = client.create_topics([NewTopic(settings.heads_topic, 1, config=topic_config),
                                    NewTopic(settings.deadletter_topic, 1)])
    for future in futures.values():
        future.result(30)
    return Runtime("collector", settings)


def produced_metric(runtime: Runtime) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "headbits_produced_records_total",
        {"service": "collector", "topic": runtime.settings.heads_topic})
    return value or 0.0


def test_the_produced_metric_counts_acknowledged_heads(kafka_bootstrap):
    runtime = collector_runtime(kafka_bootstrap)
    assert collect(runtime, CountingSource(3000)) == 3000
    runtime.close()
    assert produced_metric(runtime) == 3000
    delivered = read_topic(runtime.settings, runtime.settings.heads_topic, "payload_head",
                           lambda got: len(got) >= 3000)
    assert len(delivered) == 3000


def test_a_failed_delivery_stops_the_collector_while_the_source_still_flows(kafka_bootstrap):
    # The broker refuses every record batch larger than 300 bytes: real, permanent failures.
    runtime = collector_runtime(kafka_bootstrap, **{"max.message.bytes": "300"})
    source = CountingSource(None)
    started = time.monotonic()
    with pytest.raises(DeliveryFailedError, match=r"messages failed, first: .*heads"):
        collect(runtime, source)
    assert time.monotonic() - started < 30
    # How many heads flow before the broker's first refusal comes back depends on the machine's
    # load (the idempotent producer's set-up alone can take seconds); what must hold is that it
    # is noticed within the producer's own bound, not at the end of an endless source.
    assert source.given <= 200_000, "failures were noticed only long after they happened"
    runtime.close(flush=False)
    assert produced_metric(runtime) == 0, "nothing was acknowledged, so nothing is counted"
