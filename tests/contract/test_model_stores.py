"""The `ModelStore` contract (common/model_store/base.py), run against every implementation.

A directory (the volume TF Serving replicas mount), an S3 bucket and a GCS bucket. The buckets
live on stand-ins that speak the real protocols: moto's standalone server for S3, with
credentials enforced (services/devtools/s3_standin.py), and gcp-storage-emulator for GCS's JSON
API (services/devtools/gcs_standin.py). The production clients reach them configured from the
environment, as in production. Every store must list the versions it published with their
metadata, hand them back, refuse to overwrite one, and leave no integer-named version behind a
failed publish. It takes the next number from what TF Serving would see.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from headbits.common.model_repository import METADATA_FILE, RepositoryLocation
from headbits.common.model_store import ModelStore, StoreError, VolumeStore, open_store
from headbits.common.model_store.bucket import BucketStore
from headbits.common.model_store.gcs import GCSStore
from headbits.common.model_store.s3 import S3Store, client_from_environment
from headbits.devtools.gcs_standin import GCSStandin
from headbits.devtools.s3_standin import S3Standin


@dataclass
class Made:
    store: ModelStore
    children: Callable[[], set[str]]  # every child name of the base path, raw
    plant: Callable[[str, bytes], None]  # an object at a path below the base path


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Standin]:
    standin = S3Standin().start()
    yield standin
    standin.stop()


@pytest.fixture
def s3_environment(s3: S3Standin, monkeypatch, tmp_path: Path) -> S3Standin:
    """TF Serving's variables pointing at the stand-in, and no credentials from anywhere else."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    return s3


def volume(request, tmp_path: Path) -> Made:
    model_dir = tmp_path / "models" / "headbits"

    def plant(name: str, content: bytes) -> None:
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_bytes(content)

    return Made(VolumeStore(model_dir),
                lambda: {p.name for p in model_dir.iterdir()} if model_dir.exists() else set(),
                plant)


def bucket(request, tmp_path: Path) -> Made:
    standin = request.getfixturevalue("s3_environment")
    name = f"models-{uuid.uuid4().hex[:8]}"
    client = standin.client()
    client.create_bucket(Bucket=name)
    prefix = "headbits-repository/headbits"

    def children() -> set[str]:
        page = client.list_objects_v2(Bucket=name, Prefix=prefix + "/", Delimiter="/")
        return {p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])}

    def plant(key: str, content: bytes) -> None:
        client.put_object(Bucket=name, Key=f"{prefix}/{key}", Body=content)

    return Made(S3Store(f"s3://{name}/{prefix}"), children, plant)


@pytest.fixture(scope="module")
def gcs() -> Iterator[GCSStandin]:
    standin = GCSStandin().start()
    yield standin
    standin.stop()


def gcs_bucket(request, tmp_path: Path) -> Made:
    standin = request.getfixturevalue("gcs")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in standin.environment().items():
        monkeypatch.setenv(name, value)
    client = standin.client()
    name = f"models-{uuid.uuid4().hex[:8]}"
    client.create_bucket(name)
    prefix = "headbits-repository/headbits"

    def children() -> set[str]:
        listing = client.list_blobs(name, prefix=prefix + "/", delimiter="/")
        found = {page_prefix for page in listing.pages for page_prefix in page.prefixes}
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in found}

    def plant(key: str, content: bytes) -> None:
        client.bucket(name).blob(f"{prefix}/{key}").upload_from_string(content)

    return Made(GCSStore(f"gs://{name}/{prefix}"), children, plant)


FACTORIES = {"volume": volume, "s3": bucket, "gcs": gcs_bucket}


@pytest.fixture(params=sorted(FACTORIES))
def made(request, tmp_path: Path) -> Made:
    return FACTORIES[request.param](request, tmp_path)


def saved_model_tree(root: Path, version: int) -> dict[str, bytes]:
    """A SavedModel directory's shape: the graph, variables, headbits.json."""
    files = {
        "saved_model.pb": b"graph of version %d" % version,
        "fingerprint.pb": b"fingerprint",
        "variables/variables.index": b"index %d" % version,
        "variables/variables.data-00000-of-00001": bytes(range(256)) * (version * 40),
        METADATA_FILE.as_posix(): json.dumps({"model": "headbits", "version": version,
                                              "metrics": {"auroc": 0.9 + version / 100}}).encode(),
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return files


def publish(store: ModelStore, tmp_path: Path, version: int) -> dict[str, bytes]:
    staging = tmp_path / f"export-{version}"
    files = saved_model_tree(staging, version)
    store.publish(staging, version)
    return files


def test_published_versions_are_listed_with_their_metadata(made: Made, tmp_path: Path) -> None:
    assert made.store.version_names() == [] and made.store.next_version() == 1
    publish(made.store, tmp_path, 1)
    publish(made.store, tmp_path, made.store.next_version())
    assert made.store.version_names() == [1, 2]
    assert made.children() == {"1", "2"}  # nothing else left beside them
    listed = made.store.list_versions()
    assert [v.version for v in listed] == [1, 2]
    assert [v.metadata["metrics"]["auroc"] for v in listed] == [0.91, 0.92]
    assert listed[1].location == f"{made.store.base_path}/2"
    assert made.store.read_metadata(2)["version"] == 2
    assert made.store.next_version() == 3


def test_a_fetched_version_holds_every_published_file(made: Made, tmp_path: Path) -> None:
    files = publish(made.store, tmp_path, 1)
    local = made.store.fetch(1, tmp_path / "fetched")
    found = {p.relative_to(local).as_posix(): p.read_bytes()
             for p in local.rglob("*") if p.is_file()}
    assert found == files
    with pytest.raises(FileNotFoundError):
        made.store.fetch(7, tmp_path / "fetched")


def test_a_version_is_never_overwritten(made: Made, tmp_path: Path) -> None:
    publish(made.store, tmp_path, 1)
    staging = tmp_path / "again"
    saved_model_tree(staging, 5)
    with pytest.raises(FileExistsError, match="never overwritten"):
        made.store.publish(staging, 1)
    assert made.store.read_metadata(1)["version"] == 1


def test_a_failed_publish_leaves_no_integer_named_version(made: Made, tmp_path: Path) -> None:
    publish(made.store, tmp_path, 1)
    staging = tmp_path / "broken"
    saved_model_tree(staging, 2)
    # A file that cannot be read halfway through the tree (before and after it in upload order).
    (staging / "variables" / "variables.data-00001-of-00002").symlink_to(tmp_path / "missing")
    with pytest.raises(OSError):
        made.store.publish(staging, 2)
    assert made.children() == {"1"}  # neither version 2 nor a temporary name is left
    assert made.store.version_names() == [1]
    assert made.store.next_version() == 2


def test_a_half_copied_version_is_listed_as_unreadable_and_its_number_never_reused(
    made: Made, tmp_path: Path,
) -> None:
    """A publish killed while copying into place (no cleanup could run): TF Serving would see
    the integer name, so the store counts it, shows why it is unusable and publishes past it."""
    publish(made.store, tmp_path, 1)
    made.plant("2/variables/variables.index", b"half")
    made.plant(".3.partial-killed/saved_model.pb", b"upload killed")  # a non-integer name
    assert made.store.version_names() == [1, 2]
    (_, half) = made.store.list_versions()
    assert half.version == 2 and "error" in half.metadata
    assert made.store.next_version() == 3
    with pytest.raises(FileNotFoundError):
        made.store.read_metadata(2)


class DroppingClient:
    """The production S3 client, with the connection dropping at the `fail_at`-th CopyObject:
    records the keys copied into place, in order."""

    def __init__(self, client, fail_at: int | None = None) -> None:
        self._client, self._fail_at = client, fail_at
        self.copied: list[str] = []

    def copy_object(self, **kwargs):
        from botocore.exceptions import EndpointConnectionError

        if len(self.copied) + 1 == self._fail_at:
            raise EndpointConnectionError(endpoint_url="http://s3-standin")
        answer = self._client.copy_object(**kwargs)
        self.copied.append(kwargs["Key"])
        return answer

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def test_s3_copies_saved_model_pb_into_place_last(s3_environment, tmp_path: Path) -> None:
    """TF Serving loads a version once saved_model.pb is there: everything else must be before
    it (common/model_store/s3.py says why, from TF Serving's sources)."""
    s3_environment.client().create_bucket(Bucket="ordered")
    recording = DroppingClient(client_from_environment())
    store = S3Store("s3://ordered/models/headbits", client=recording)
    files = publish(store, tmp_path, 1)
    assert len(recording.copied) == len(files)
    assert recording.copied[-1] == "models/headbits/1/saved_model.pb"


def test_s3_publish_dropped_while_copying_into_place_leaves_no_version(
    s3_environment, tmp_path: Path,
) -> None:
    s3_environment.client().create_bucket(Bucket="dropping")
    store = S3Store("s3://dropping/models/headbits", client=DroppingClient(
        client_from_environment(), fail_at=3))
    staging = tmp_path / "export"
    saved_model_tree(staging, 1)
    with pytest.raises(StoreError, match="copying"):
        store.publish(staging, 1)
    page = s3_environment.client().list_objects_v2(Bucket="dropping")
    assert page.get("KeyCount") == 0, [item["Key"] for item in page.get("Contents", [])]


def test_wrong_credentials_name_the_store_and_what_to_check(
    s3_environment: S3Standin, monkeypatch,
) -> None:
    s3_environment.client().create_bucket(Bucket="guarded")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreError, match="SignatureDoesNotMatch") as error:
        S3Store("s3://guarded/models/headbits").version_names()
    assert "s3://guarded/models/headbits" in str(error.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(error.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN")
    with pytest.raises(StoreError, match="InvalidAccessKeyId"):
        S3Store("s3://guarded/models/headbits").next_version()


def test_missing_credentials_and_a_missing_bucket_are_store_errors(
    s3_environment: S3Standin, monkeypatch, tmp_path: Path,
) -> None:
    with pytest.raises(StoreError, match="NoSuchBucket"):
        S3Store("s3://no-such-bucket/models").version_names()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    staging = tmp_path / "export"
    saved_model_tree(staging, 1)
    with pytest.raises(StoreError, match="Unable to locate credentials"):
        S3Store("s3://no-such-bucket/models").publish(staging, 1)


def test_model_store_chooses_the_implementation(tmp_path: Path, s3_environment) -> None:
    local = open_store(RepositoryLocation(models_dir=tmp_path), "headbits")
    assert isinstance(local, VolumeStore)
    assert local.base_path == str((tmp_path / "headbits").resolve())
    remote = open_store(RepositoryLocation(model_store="s3://detections/headbits/"), "hb")
    assert isinstance(remote, S3Store) and remote.base_path == "s3://detections/headbits/hb"
    with pytest.raises(StoreError, match="an s3:// or gs://bucket/prefix"):
        open_store(RepositoryLocation(model_store="az://detections/headbits"), "hb")


def test_gcs_without_credentials_says_where_they_come_from(monkeypatch, tmp_path: Path) -> None:
    """The GCS stand-in checks no credentials; finding none is the client's own refusal."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(StoreError, match="GOOGLE_APPLICATION_CREDENTIALS") as error:
        open_store(RepositoryLocation(model_store="gs://detections/headbits"), "hb")
    assert "no-key.json" in str(error.value)


def test_a_gcs_publish_dropped_while_copying_into_place_leaves_no_version(
    gcs: GCSStandin, monkeypatch, tmp_path: Path,
) -> None:
    for name, value in gcs.environment().items():
        monkeypatch.setenv(name, value)
    gcs.client().create_bucket("dropping")
    store = GCSStore("gs://dropping/models/headbits")
    copies = []

    def dropping_copy(source: str, target: str) -> None:
        copies.append(target)
        if len(copies) == 3:
            raise StoreError(f"copying {source}: the connection dropped")
        GCSStore._copy(store, source, target)

    monkeypatch.setattr(store, "_copy", dropping_copy)
    staging = tmp_path / "export"
    saved_model_tree(staging, 1)
    with pytest.raises(StoreError, match="copying"):
        store.publish(staging, 1)
    assert [blob.name for blob in gcs.client().list_blobs("dropping")] == []


@pytest.mark.slow
def test_a_trained_version_published_by_the_exporter_loads_after_fetch(
    made: Made, tmp_path: Path,
) -> None:
    """The trainer's own path: publish_model into the store, `headbits model`'s listing of it,
    and the fetched copy scored in-process as the trainer scores the stable version."""
    from headbits.scorer.inprocess import SavedModelBackend
    from headbits.trainer.export import publish_model
    from headbits.trainer.rollout import ModelSettings, Repository, version_rows
    from tests.serving_models import _trained, labelled_heads

    location = publish_model(_trained(1), made.store, metadata={"metrics": {"auroc": 0.75}})
    assert location == f"{made.store.base_path}/1"
    assert made.children() == {"1"}
    backend = SavedModelBackend(made.store.fetch(1, tmp_path / "fetched"))
    try:
        heads = labelled_heads(16, seed=5)[0]
        assert len(backend.score(heads).reconstruction_error) == 16
    finally:
        backend.close()

    settings = ModelSettings(models_dir=tmp_path / "models",
                             model_store=made.store.base_path.removesuffix("/headbits")
                             if isinstance(made.store, BucketStore) else "",
                             config_file=tmp_path / "serving" / "models.config")
    repository = Repository(settings)
    assert repository.base_path == made.store.base_path
    ((version, labels, loaded, n, classes, _, metrics),) = version_rows(repository)
    assert (version, labels, loaded, n, classes, metrics) == ("1", "-", "no", "8", "2",
                                                              "auroc=0.75")
