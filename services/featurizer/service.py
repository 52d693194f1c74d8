"""Run the featurizer service: PayloadHeads from Kafka -> packed feature records to Kafka.

Consumes headbits.heads.v2 in batches (`.v1` records too), packs each connection's heads at N=64
with the expected protocol (Zeek's service, else the port), column by column, and produces
headbits.features.v2: one Arrow batch per sensor, keyed by the sensor (`topic_format v1`: one Avro
record per connection keyed by uid). Invalid or undecodable heads go to headbits.deadletter.v1
with their offset (and row) and reason. Offsets are stored
only after the outputs are acknowledged (at-least-once). Metrics and /healthz on --metrics-port.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pyarrow as pa

from headbits.common.kafka import FeaturesTopic, HeadsTopic
from headbits.common.service import ServiceSettings, Stage, TableOutput, Transformed, run_stage
from headbits.common.settings import add_settings_arguments, settings_from_args
from headbits.featurizer.transform import featurize_table


@dataclass(frozen=True)
class FeaturizerSettings(ServiceSettings, HeadsTopic, FeaturesTopic):
    """The featurizer has only the shared service and Kafka settings."""


class FeaturizerStage(Stage):
    name = "featurizer"
    input_schema = "payload_head"

    def __init__(self, features_topic: str) -> None:
        self._topic = features_topic

    def output_schemas(self) -> dict[str, str]:
        return {self._topic: "features"}

    def transform(self, table: pa.Table) -> Transformed:
        features, rejected = featurize_table(table)
        return Transformed([TableOutput(self._topic, features, features.column("sensor"))],
                           rejected)


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, FeaturizerSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(FeaturizerSettings, args)
    return run_stage(FeaturizerStage(settings.features_topic), settings, settings.heads_topic)
