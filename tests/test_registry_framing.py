"""The services' own Confluent framing against a real schema registry (Apicurio's ccompat API).

`ValueCodec` registers each topic's schema under `<topic>-value` with confluent-kafka's
`SchemaRegistryClient` and writes magic byte 0 + the 4-byte id + Avro; values written with
another registered schema of the subject are resolved by Avro's rules; an id the registry does
not know is a decode error (dead-lettered), not a crash. A featurizer process configured with
the registry reads framed heads and writes framed features, through a real Kafka.
"""

from __future__ import annotations

import io
import json
import struct
import uuid

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from headbits.common.avro import DecodeError, ValueCodec, load_schema, open_registry
from headbits.common.kafka import KafkaConnection, KafkaSettings, Producer
from headbits.devtools.harness import ServiceProcess, Topics
from tests.source_helpers import make_heads

pytestmark = pytest.mark.registry


def registry(url: str):
    return open_registry(KafkaConnection(schema_registry_url=url))


def test_values_are_framed_with_the_registered_id_and_read_back(schema_registry_url):
    topic = f"t{uuid.uuid4().hex[:8]}.heads"
    codec = ValueCodec("payload_head", topic, registry(schema_registry_url))
    head = make_heads(1)[0].to_dict()
    value = codec.encode(head)
    magic, schema_id = struct.unpack(">bI", value[:5])
    latest = registry(schema_registry_url).get_latest_version(f"{topic}-value")
    assert magic == 0 and schema_id == latest.schema_id
    assert codec.headers is None, "framed values need no schema headers"
    reader = ValueCodec("payload_head", topic, registry(schema_registry_url))
    assert reader.decode(value, None) == head


def test_a_value_of_a_newer_registered_schema_is_resolved_to_ours(schema_registry_url):
    topic = f"t{uuid.uuid4().hex[:8]}.heads"
    ours = ValueCodec("payload_head", topic, registry(schema_registry_url))
    newer = json.loads(json.dumps(load_schema("payload_head")))
    newer["fields"].append({"name": "vlan", "type": "int", "default": 0})
    client = registry(schema_registry_url)
    client.set_compatibility(f"{topic}-value", "BACKWARD")
    newer_id = client.register_schema(f"{topic}-value", Schema(json.dumps(newer), "AVRO"))
    head = make_heads(1)[0].to_dict()
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(newer), {**head, "vlan": 7})
    value = struct.pack(">bI", 0, newer_id) + body.getvalue()
    assert ours.decode(value, None) == head


def test_an_unknown_schema_id_is_a_decode_error(schema_registry_url):
    codec = ValueCodec("payload_head", f"t{uuid.uuid4().hex[:8]}.heads",
                       registry(schema_registry_url))
    with pytest.raises(DecodeError, match="not in the registry"):
        codec.decode(struct.pack(">bI", 0, 987_654_321) + b"\x00", None)
    with pytest.raises(DecodeError, match="not Confluent-framed"):
        codec.decode(b"\x01\x02", None)


@pytest.mark.kafka
def test_the_featurizer_reads_and_writes_framed_values(schema_registry_url, kafka_bootstrap,
                                                       tmp_path):
    topics = Topics(kafka_bootstrap, partitions=2)
    # The framed path is the `.v1` record format: `.v2` batches are Arrow, which the registry's
    # Avro schemas do not describe (docs/architecture.md, "Batched topics").
    env = {**topics.env, "HEADBITS_SCHEMA_REGISTRY_URL": schema_registry_url,
           "HEADBITS_TOPIC_FORMAT": "v1"}
    heads = make_heads(300)
    framed = ValueCodec("payload_head", topics["heads"], registry(schema_registry_url))
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    producer = Producer(settings)
    producer.produce_many(topics["heads"], framed.encode_many([h.to_dict() for h in heads]),
                          [h.uid for h in heads], framed.headers)
    producer.flush()
    featurizer = ServiceProcess("featurizer", env, tmp_path)
    try:
        featurizer.wait_started()
        features = ValueCodec("features", topics["features"], registry(schema_registry_url))
        from headbits.common.kafka import Consumer

        consumer = Consumer(settings, f"reader-{uuid.uuid4().hex}", [topics["features"]])
        uids: set[str] = set()
        try:
            for _ in range(240):
                for message in consumer.consume(1000, 0.5):
                    uids.add(features.decode(message.value(), message.headers())["uid"])
                if len(uids) == len(heads):
                    break
        finally:
            consumer.close()
        assert uids == {h.uid for h in heads}
    finally:
        assert featurizer.stop() == 0
