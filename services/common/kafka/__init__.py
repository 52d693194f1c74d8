"""The only package that touches confluent-kafka: clients with their defaults chosen once.

Split the way Quix Streams splits its `kafka/` package, one job a module:

- `settings.py`: the connection (cluster, security, schema registry) apart from the topics; each
  topic is a small settings class, so a service's settings name only the topics it uses and its
  `--help` shows nothing else.
- `client_log.py`: librdkafka's own log lines and errors routed to the JSON logger.
- `producer.py`, `consumer.py`: the streaming clients (at-least-once: offsets stored by the
  service loop only after a batch's outputs are acknowledged).
- `admin.py`: topic creation with retention, cluster reachability.
- `range_reader.py`: offsets of a time window and a reader of fixed offset ranges (the trainer).

Serialization (`headbits.common.avro`) and the stages never import confluent-kafka.
"""

from confluent_kafka import KafkaException

from headbits.common.kafka.admin import admin, ensure_topics, wait_for_cluster
from headbits.common.kafka.consumer import Consumer, Message
from headbits.common.kafka.producer import DeliveryFailedError, Producer
from headbits.common.kafka.range_reader import read_offset_ranges, window_offsets
from headbits.common.kafka.settings import (
    AlertsJsonTopic,
    AlertsTopic,
    DeadLetterTopic,
    DriftTopic,
    FeaturesTopic,
    FeedbackTopic,
    HeadsTopic,
    KafkaConnection,
    KafkaSettings,
    ProducerBuffer,
    RulesTopic,
    ScoresTopic,
    TopicCreation,
    topic_retentions,
)

__all__ = [
    "AlertsJsonTopic",
    "AlertsTopic",
    "Consumer",
    "DeadLetterTopic",
    "DeliveryFailedError",
    "DriftTopic",
    "FeaturesTopic",
    "FeedbackTopic",
    "HeadsTopic",
    "KafkaConnection",
    "KafkaException",
    "KafkaSettings",
    "Message",
    "Producer",
    "ProducerBuffer",
    "RulesTopic",
    "ScoresTopic",
    "TopicCreation",
    "admin",
    "ensure_topics",
    "read_offset_ranges",
    "topic_retentions",
    "wait_for_cluster",
    "window_offsets",
]
