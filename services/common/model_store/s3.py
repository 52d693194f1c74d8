"""Versions in an S3 bucket (AWS S3, MinIO, Ceph RGW): `s3://bucket/prefix/<version>/...`.

The client is configured from the environment TF Serving's own S3 file system reads
(tensorflow/core/platform/s3/s3_file_system.cc), so one env block or Secret serves the server and
the trainer: `S3_ENDPOINT` (host:port of MinIO or Ceph RGW; a URL with a scheme works too),
`S3_USE_HTTPS` (0: plain HTTP), `S3_VERIFY_SSL` (0: no certificate check), `AWS_REGION`, and the
credentials boto3 finds itself (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a web identity token
from IRSA, a profile). With an endpoint override, requests use path-style addressing, as MinIO
and RGW expect. How a version is published without TF Serving seeing it half-written:
bucket.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from headbits.common.model_store.base import StoreError
from headbits.common.model_store.bucket import BucketStore

CHECK = ("check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the pod's "
         "role), AWS_REGION and S3_ENDPOINT")


def client_from_environment():
    """A boto3 S3 client configured as TF Serving configures its own (module docstring)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:
        raise StoreError("an s3:// model_store needs boto3 (pip install headbits[trainer])") \
            from error
    endpoint = os.environ.get("S3_ENDPOINT", "")
    if endpoint and "://" not in endpoint:
        scheme = "http" if os.environ.get("S3_USE_HTTPS", "1").startswith("0") else "https"
        endpoint = f"{scheme}://{endpoint}"
    region = os.environ.get("AWS_REGION") or os.environ.get("S3_REGION") or None
    config = Config(
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10, read_timeout=60,
    )
    # A session of its own: boto3's default session keeps the credentials it first found.
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or None, region_name=region,
        verify=not os.environ.get("S3_VERIFY_SSL", "1").startswith("0"), config=config,
    )


class S3Store(BucketStore):
    scheme = "s3"

    def __init__(self, url: str, client=None) -> None:
        super().__init__(url)
        self._client = client or client_from_environment()

    def _call(self, what: str, method: str, **kwargs):
        """One S3 request; a refusal or an unreachable endpoint becomes a StoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.base_path}: {what}: no such object") from error
            raise StoreError(f"{self.base_path}: {what}: {code or error} ({CHECK})") from error
        except BotoCoreError as error:
            raise StoreError(f"{self.base_path}: {what}: {error} ({CHECK})") from error

    def _pages(self, **kwargs):
        token = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("listing", "list_objects_v2", Bucket=self.bucket, **kwargs,
                              **extra)
            yield page
            token = page.get("NextContinuationToken")
            if not token:
                return

    def _children(self, prefix: str) -> list[str]:
        return [p["Prefix"][len(prefix):].rstrip("/")
                for page in self._pages(Prefix=prefix, Delimiter="/")
                for p in page.get("CommonPrefixes", [])]

    def _keys(self, prefix: str) -> list[str]:
        return [item["Key"] for page in self._pages(Prefix=prefix)
                for item in page.get("Contents", [])]

    def _read(self, key: str) -> bytes:
        return self._call(f"reading {key}", "get_object", Bucket=self.bucket,
                          Key=key)["Body"].read()

    def _upload(self, path: Path, key: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_file(str(path), self.bucket, key)
        except (ClientError, BotoCoreError, S3UploadFailedError) as error:
            raise StoreError(f"{self.base_path}: uploading {key}: {error} ({CHECK})") from error

    def _copy(self, source: str, target: str) -> None:
        # One CopyObject per file (objects up to 5 GB; a version is a few MB).
        self._call(f"copying {source}", "copy_object", Bucket=self.bucket, Key=target,
                   CopySource={"Bucket": self.bucket, "Key": source})

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            self._call("deleting", "delete_objects", Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})
