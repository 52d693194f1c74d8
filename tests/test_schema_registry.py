"""The registry path's counterpart: a real Confluent-compatible registry, spoken to as the
services speak to it (`confluent_kafka.schema_registry`).

`SchemaRegistryClient` caches what it registered and fetched, so every check that must reach
the registry uses a fresh client.
"""

from __future__ import annotations

import json
import uuid
from importlib import resources

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from headbits.devtools import schema_registry

pytestmark = pytest.mark.registry

READING = {
    "type": "record", "name": "Reading", "namespace": "headbits.test",
    "fields": [{"name": "uid", "type": "string"}, {"name": "bytes", "type": "long"}],
}


def client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url})


def subject() -> str:
    return f"headbits-test-{uuid.uuid4().hex[:12]}-value"


def avro(schema: dict) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


def with_field(schema: dict, field: dict) -> dict:
    return {**schema, "fields": [*schema["fields"], field]}


def canonical(schema_text: str) -> str:
    return fastavro.schema.to_parsing_canonical_form(
        fastavro.parse_schema(json.loads(schema_text)))


def test_registration_is_idempotent_and_the_schema_comes_back_by_id(schema_registry_url):
    alert_text = resources.files("headbits.common").joinpath("schemas", "alert.avsc").read_text()
    name = subject()
    first = client(schema_registry_url).register_schema(name, Schema(alert_text, "AVRO"))
    again = client(schema_registry_url).register_schema(name, Schema(alert_text, "AVRO"))
    assert again == first
    assert client(schema_registry_url).get_versions(name) == [1]

    fetched = client(schema_registry_url).get_schema(first)
    assert fetched.schema_type == "AVRO"
    assert canonical(fetched.schema_str) == canonical(alert_text)
    latest = client(schema_registry_url).get_latest_version(name)
    assert (latest.schema_id, latest.version) == (first, 1)

    other = client(schema_registry_url).register_schema(name + "-other", avro(READING))
    assert other != first


def test_backward_compatibility_accepts_a_defaulted_field_and_refuses_a_required_one(
    schema_registry_url,
):
    name = subject()
    registry = client(schema_registry_url)
    first = registry.register_schema(name, avro(READING))
    registry.set_compatibility(subject_name=name, level="BACKWARD")
    assert client(schema_registry_url).get_compatibility(name) == "BACKWARD"

    defaulted = with_field(READING, {"name": "sensor", "type": "string", "default": "unknown"})
    assert client(schema_registry_url).test_compatibility(name, avro(defaulted)) is True
    second = client(schema_registry_url).register_schema(name, avro(defaulted))
    assert second != first

    required = with_field(defaulted, {"name": "port", "type": "int"})
    assert client(schema_registry_url).test_compatibility(name, avro(required)) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client(schema_registry_url).register_schema(name, avro(required))
    assert refused.value.http_status_code == 409
    assert "incompatible" in refused.value.error_message.lower()
    assert "port" in refused.value.error_message
    assert client(schema_registry_url).get_versions(name) == [1, 2]


# Fields the SOC work (suppression, aggregation, evidence, SIEM forms) added to Alert and Score.
GROWN_FIELDS = {
    "alert": {"community_id", "evidence", "severity", "learning", "count", "first_seen",
              "last_seen", "uids"},
    "score": {"suppressed_by"},
}


@pytest.mark.parametrize("name", sorted(GROWN_FIELDS))
def test_grown_alert_and_score_schemas_pass_a_backward_registry(schema_registry_url, name):
    """The schema as it was before the grown fields is registered first; a registry in BACKWARD
    mode must accept today's schema (readers with it read the old records) as the next version."""
    text = resources.files("headbits.common").joinpath("schemas", f"{name}.avsc").read_text()
    today = json.loads(text)
    grown = [f for f in today["fields"] if f["name"] in GROWN_FIELDS[name]]
    assert len(grown) == len(GROWN_FIELDS[name]) and all("default" in f for f in grown)
    before = {**today, "fields": [f for f in today["fields"]
                                  if f["name"] not in GROWN_FIELDS[name]]}
    subject_name = subject()
    registry = client(schema_registry_url)
    registry.register_schema(subject_name, avro(before))
    registry.set_compatibility(subject_name=subject_name, level="BACKWARD")
    without_default = {**today, "fields": [
        {k: v for k, v in f.items() if k != "default"} if f["name"] in GROWN_FIELDS[name] else f
        for f in today["fields"]]}
    assert client(schema_registry_url).test_compatibility(subject_name,
                                                          avro(without_default)) is False
    assert client(schema_registry_url).test_compatibility(subject_name, Schema(text, "AVRO"))
    client(schema_registry_url).register_schema(subject_name, Schema(text, "AVRO"))
    assert client(schema_registry_url).get_versions(subject_name) == [1, 2]


def test_an_unknown_id_or_subject_is_a_clear_404(schema_registry_url):
    registry = client(schema_registry_url)
    with pytest.raises(SchemaRegistryError) as unknown_id:
        registry.get_schema(987654)
    assert (unknown_id.value.http_status_code, unknown_id.value.error_code) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as unknown_subject:
        registry.get_versions(subject())
    assert (unknown_subject.value.http_status_code, unknown_subject.value.error_code) == (404,
                                                                                         40401)


def test_stop_ends_the_registry_and_removes_its_files(schema_registry_url):
    own = schema_registry.start()
    assert own.url != schema_registry_url
    assert schema_registry.answers(own.url)
    own.stop()
    assert not own.is_alive()
    assert not own.run_dir.exists()
    assert not schema_registry.answers(own.url)
    assert schema_registry.answers(schema_registry_url)


def test_missing_maven_or_java_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv(schema_registry.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(schema_registry.DevSchemaRegistryError, match="mvn is not on PATH"):
        schema_registry.start()
    built = schema_registry.app_dir()
    built.mkdir(parents=True)
    (built / ".complete").write_text(schema_registry.APICURIO_VERSION)
    with pytest.raises(schema_registry.DevSchemaRegistryError,
                       match="java is not on PATH: Apicurio Registry needs Java 17"):
        schema_registry.start()
