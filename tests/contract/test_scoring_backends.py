"""The `ScoringBackend` contract (scorer/backend.py), run against every implementation.

The in-process SavedModel backend and the TF Serving gRPC backend (against the development
stand-in, which speaks TF Serving's protocol) get the same model version and must answer the
same: what `info()` says, that wider heads are cut to the model's N and give the scores of the
cut heads, that narrower heads are refused, and that an empty batch gives empty scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from headbits.common.model_repository import config_text, model_server_config, write_atomically
from headbits.devtools.tfserving_standin import StandinServer, standin_settings
from headbits.featurizer.bits import HeadBatch
from headbits.scorer.backend import ScoringBackend
from headbits.scorer.inprocess import SavedModelBackend
from headbits.scorer.tfserving import TFServingBackend, open_channel
from tests.serving_models import CLASSES, VERSIONS, export_versions, labelled_heads

pytestmark = pytest.mark.slow

VERSION = 3  # N=16, so N=8 heads are narrower and N=64 heads wider
SCORE_FIELDS = ("reconstruction_error", "direction_error", "protocol_probs", "threshold")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return export_versions(tmp_path_factory.mktemp("models"), versions=(VERSION,))


@pytest.fixture(scope="module")
def standin(models_dir: Path, tmp_path_factory) -> Iterator[StandinServer]:
    config_file = tmp_path_factory.mktemp("serving") / "models.config"
    config = model_server_config("headbits", str(models_dir / "headbits"), [VERSION],
                                 {"stable": VERSION})
    write_atomically(config_file, config_text(config))
    # As with the real server, labels in the config at start-up need this flag.
    server = StandinServer(standin_settings(
        config_file, allow_version_labels_for_unavailable_models=True)).start()
    yield server
    server.stop(grace=None)


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts the RPCs a backend makes, by method name."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def intercept_unary_unary(self, continuation, details, request):
        method = details.method.rsplit("/", 1)[-1]
        self.calls[method] = self.calls.get(method, 0) + 1
        return continuation(details, request)


@pytest.fixture(params=["in-process", "tfserving"])
def backend(request, models_dir: Path) -> Iterator[ScoringBackend]:
    if request.param == "in-process":
        made: ScoringBackend = SavedModelBackend(models_dir / "headbits" / str(VERSION))
    else:
        made = TFServingBackend(request.getfixturevalue("standin").target)
    yield made
    made.close()


@pytest.fixture(scope="module")
def heads() -> HeadBatch:
    return labelled_heads(64, seed=11)[0]


def test_info_describes_the_model(backend: ScoringBackend) -> None:
    info = backend.info()
    assert (info.name, info.version, info.n, info.classes) == (
        "headbits", VERSION, VERSIONS[VERSION][0], CLASSES)
    assert backend.info() == info


def test_wider_heads_are_cut_to_the_model_n(backend: ScoringBackend, heads: HeadBatch) -> None:
    wide = backend.score(heads)
    cut = backend.score(heads.truncate(backend.info().n))
    assert len(wide.reconstruction_error) == len(heads)
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(wide, name), getattr(cut, name), err_msg=name)
    assert wide.protocol_probs.shape == (len(heads), len(CLASSES))
    assert wide.model == backend.info()


def test_narrower_heads_are_refused(backend: ScoringBackend, heads: HeadBatch) -> None:
    with pytest.raises(ValueError, match="N=8"):
        backend.score(heads.truncate(8))


def test_an_empty_batch_gives_empty_scores(backend: ScoringBackend, heads: HeadBatch) -> None:
    scores = backend.score(heads.select(slice(0, 0)))
    assert scores.reconstruction_error.shape == (0,)
    assert scores.direction_error.shape == (0, 2)
    assert scores.protocol_probs.shape == (0, len(CLASSES))


def test_tfserving_asks_for_model_info_once_not_per_batch(standin, heads: HeadBatch) -> None:
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(open_channel(standin.target, None, 1 << 26), counter)
    backend = TFServingBackend(standin.target, channel=channel)
    try:
        for _ in range(5):
            backend.info()
            backend.score(heads)
    finally:
        channel.close()
    assert counter.calls["GetModelStatus"] == 1
    assert counter.calls["GetModelMetadata"] == 1
    assert counter.calls["Predict"] == 1 + 5  # the classes of the version, then the batches
