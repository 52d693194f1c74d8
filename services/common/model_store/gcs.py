"""Versions in a Google Cloud Storage bucket: `gs://bucket/prefix/<version>/...`.

Credentials are what TF Serving's own GCS file system finds too (Application Default
Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, else the GKE metadata server with Workload
Identity), so the trainer and the server share one service account. `STORAGE_EMULATOR_HOST` is
the client library's switch to an emulator (the tests' stand-in); production leaves it unset.
How a version is published without TF Serving seeing it half-written: bucket.py.
"""

from __future__ import annotations

from pathlib import Path

from headbits.common.model_store.base import StoreError
from headbits.common.model_store.bucket import BucketStore

CHECK = ("check the credentials (GOOGLE_APPLICATION_CREDENTIALS, or the pod's Workload Identity "
         "service account) and its access to the bucket")


def client_from_environment():
    """A google-cloud-storage client with Application Default Credentials (module docstring)."""
    try:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage
    except ImportError as error:
        raise StoreError("a gs:// model_store needs google-cloud-storage (pip install "
                         "headbits[trainer])") from error
    try:
        return storage.Client()
    except DefaultCredentialsError as error:
        raise StoreError(f"gs://: no credentials: {error} ({CHECK})") from error


class GCSStore(BucketStore):
    scheme = "gs"

    def __init__(self, url: str, client=None) -> None:
        super().__init__(url)
        self._client = client or client_from_environment()

    def _call(self, what: str, request):
        """One GCS request; a refusal or an unreachable endpoint becomes a StoreError."""
        from google.api_core.exceptions import GoogleAPIError, NotFound
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        try:
            return request()
        except NotFound as error:
            if what.startswith("reading"):
                raise FileNotFoundError(f"{self.base_path}: {what}: no such object") from error
            raise StoreError(f"{self.base_path}: {what}: {error.message} ({CHECK})") from error
        except GoogleAPIError as error:
            raise StoreError(f"{self.base_path}: {what}: {error} ({CHECK})") from error
        except (GoogleAuthError, RequestException) as error:
            raise StoreError(f"{self.base_path}: {what}: {error} ({CHECK})") from error

    def _children(self, prefix: str) -> list[str]:
        def listing() -> set[str]:
            pages = self._client.list_blobs(self.bucket, prefix=prefix, delimiter="/")
            found: set[str] = set()
            for page in pages.pages:
                found |= set(page.prefixes)
            return found

        return sorted(p[len(prefix):].rstrip("/") for p in self._call("listing", listing))

    def _keys(self, prefix: str) -> list[str]:
        return self._call("listing", lambda: [blob.name for blob in self._client.list_blobs(
            self.bucket, prefix=prefix)])

    def _read(self, key: str) -> bytes:
        blob = self._client.bucket(self.bucket).blob(key)
        return self._call(f"reading {key}", blob.download_as_bytes)

    def _upload(self, path: Path, key: str) -> None:
        blob = self._client.bucket(self.bucket).blob(key)
        self._call(f"uploading {key}", lambda: blob.upload_from_filename(str(path)))

    def _copy(self, source: str, target: str) -> None:
        bucket = self._client.bucket(self.bucket)
        self._call(f"copying {source}",
                   lambda: bucket.copy_blob(bucket.blob(source), bucket, target))

    def _delete(self, keys: list[str]) -> None:
        bucket = self._client.bucket(self.bucket)
        for key in keys:
            self._call(f"deleting {key}", bucket.blob(key).delete)
