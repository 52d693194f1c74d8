"""One pipeline under fault per module: its own Kafka broker (the suite restarts it), the TF
Serving stand-in with a tiny real model, featurizer and scorer as processes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from headbits.devtools.faults import FaultPipeline

    pipeline = FaultPipeline(tmp_path_factory.mktemp("faults"))
    try:
        yield pipeline
    finally:
        pipeline.close()


@pytest.fixture
def rng() -> np.random.Generator:
    """Random fault points, reproducible from the printed seed (HEADBITS_FAULTS_SEED)."""
    seed = int(os.environ.get("HEADBITS_FAULTS_SEED") or time.time_ns() % 2**32)
    print(f"fault seed {seed} (rerun with HEADBITS_FAULTS_SEED={seed})")
    return np.random.default_rng(seed)
