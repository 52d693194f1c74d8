"""Where a model's versions live: `open_store` picks the implementation from `model_store`.

base.py states the contract; volume.py (a directory) implements it, and bucket.py for object
stores on the primitives of s3.py (an S3 bucket) and gcs.py (a Google Cloud Storage bucket);
tests/contract/test_model_stores.py runs all three through the same tests.
"""

from __future__ import annotations

from headbits.common.model_repository import RepositoryLocation
from headbits.common.model_store.base import ModelStore, StoreError
from headbits.common.model_store.volume import VolumeStore

__all__ = ["ModelStore", "StoreError", "VolumeStore", "open_store"]


def open_store(location: RepositoryLocation, model_name: str) -> ModelStore:
    """The store of `model_name`: under `model_store` if set, else under `models_dir`."""
    url = location.model_store.rstrip("/")
    if not url:
        return VolumeStore(location.models_dir / model_name)
    if url.startswith("s3://"):
        from headbits.common.model_store.s3 import S3Store

        return S3Store(f"{url}/{model_name}")
    if url.startswith("gs://"):
        from headbits.common.model_store.gcs import GCSStore

        return GCSStore(f"{url}/{model_name}")
    raise StoreError(f"model_store {location.model_store!r}: an s3:// or gs://bucket/prefix, or "
                     "empty for the models_dir directory")
