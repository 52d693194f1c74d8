"""Kafka settings, one small class per concern, so each service composes only what it uses.

A service's settings class extends `KafkaConnection` and the topic classes of the topics it reads
or writes (`HeadsTopic`, `FeaturesTopic`, ...). Field names are the same everywhere (the YAML
key, `HEADBITS_<NAME>` and the Helm value), so `heads_topic` means one thing in every service.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from headbits.common.settings import Secret, setting

DAY_MS = 24 * 3600 * 1000
TOPIC_KINDS = ("heads", "features", "alerts", "scores", "deadletter", "drift", "feedback")
OPTIONAL_TOPIC_KINDS = ("alerts_json",)
"""Topics that exist only when their setting names one (None: not written)."""


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the cluster and, optionally, a Confluent-compatible schema registry."""

    bootstrap_servers: str = setting("127.0.0.1:9092", "Kafka bootstrap servers, host:port,...")
    security_protocol: str = setting(
        "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: str | None = setting(None, "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER")
    sasl_username: str | None = setting(None, "SASL user name")
    sasl_password: Secret | None = setting(
        None, "SASL password: never logged or shown (prefer the env var to a file or an option)")
    ssl_ca_location: str | None = setting(None, "CA certificate file that signed the brokers'")
    ssl_certificate_location: str | None = setting(None, "client certificate file (mutual TLS)")
    ssl_key_location: str | None = setting(None, "client private key file (mutual TLS)")
    schema_registry_url: str | None = setting(
        None, "Confluent-compatible schema registry; unset: schemaless Avro + fingerprint header"
    )
    schema_registry_auth: Secret | None = setting(
        None, "registry basic auth as user:password: never logged or shown")


@dataclass(frozen=True)
class TopicCreation:
    """Whether and how a service creates the topics it uses when they are missing."""

    create_topics: bool = setting(True, "create missing topics at start (needs the ACL to)")
    topic_partitions: int = setting(-1, "partitions of created topics (-1: broker default)")
    topic_replication_factor: int = setting(
        -1, "replication of created topics (-1: broker default)"
    )


@dataclass(frozen=True)
class ProducerBuffer:
    producer_buffer_mb: int = setting(
        32, "memory for messages Kafka has not acknowledged; when Kafka stalls, a service "
            "stops reading its input at this bound instead of growing")


@dataclass(frozen=True)
class HeadsTopic:
    heads_topic: str = setting(
        "headbits.heads.v2", "topic of PayloadHeads (.v2: Arrow batches; a .v1 topic is read too)")
    heads_retention_days: float = setting(7.0, "retention of the heads topic")


@dataclass(frozen=True)
class FeaturesTopic:
    features_topic: str = setting(
        "headbits.features.v2", "topic of feature records (a .v1 topic is read too)")
    features_retention_days: float = setting(30.0, "retention of the features topic (training)")


@dataclass(frozen=True)
class AlertsTopic:
    alerts_topic: str = setting("headbits.alerts.v1", "topic of alerts")
    alerts_retention_days: float = setting(90.0, "retention of the alerts topic")


@dataclass(frozen=True)
class ScoresTopic:
    scores_topic: str = setting(
        "headbits.scores.v2", "topic of every score (optional output; .v1 is read too)")
    scores_retention_days: float = setting(7.0, "retention of the scores topic")


@dataclass(frozen=True)
class DeadLetterTopic:
    deadletter_topic: str = setting("headbits.deadletter.v1", "topic of undecodable input")
    deadletter_retention_days: float = setting(14.0, "retention of the dead-letter topic")


@dataclass(frozen=True)
class DriftTopic:
    drift_topic: str = setting("headbits.drift.v1", "topic of drift measurements")
    drift_retention_days: float = setting(30.0, "retention of the drift topic")


@dataclass(frozen=True)
class FeedbackTopic:
    feedback_topic: str = setting(
        "headbits.feedback.v1", "topic of analysts' verdicts on alerts (benign/malicious)")
    feedback_retention_days: float = setting(
        365.0, "retention of the feedback topic (the audit trail and the trainer's labels)")


@dataclass(frozen=True)
class AlertsJsonTopic:
    alerts_json_topic: str | None = setting(
        None, "also write every alert as one JSON object (alerts_json_format) to this topic")
    alerts_json_retention_days: float = setting(90.0, "retention of the JSON alerts topic")


@dataclass(frozen=True)
class RulesTopic:
    """Compacted: the latest record per rule id is the rule; a null value removes it."""

    rules_topic: str = setting(
        "headbits.rules.v1", "compacted topic of suppression rules and learning starts")


@dataclass(frozen=True)
class KafkaSettings(
    KafkaConnection, TopicCreation, ProducerBuffer, HeadsTopic, FeaturesTopic, AlertsTopic,
    ScoresTopic, DeadLetterTopic, DriftTopic, FeedbackTopic, AlertsJsonTopic,
):
    """Every Kafka setting of the pipeline: for tools that touch every topic (the development
    harness, benchmarks, the chart's consistency test), never a service's own settings."""


def topic_retentions(settings: object) -> dict[str, float]:
    """Topic name -> retention in days, for each topic class `settings` includes."""
    names = {field.name for field in fields(settings)}
    return {
        getattr(settings, f"{kind}_topic"): getattr(settings, f"{kind}_retention_days")
        for kind in TOPIC_KINDS + OPTIONAL_TOPIC_KINDS
        if f"{kind}_topic" in names and getattr(settings, f"{kind}_topic")
    }


def connection_config(settings: KafkaConnection) -> dict[str, str]:
    """librdkafka properties for reaching the cluster (shared by every client)."""
    config = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password.reveal() if settings.sasl_password else None,
        "ssl.ca.location": settings.ssl_ca_location,
        "ssl.certificate.location": settings.ssl_certificate_location,
        "ssl.key.location": settings.ssl_key_location,
    }
    config.update({key: value for key, value in optional.items() if value})
    return config
