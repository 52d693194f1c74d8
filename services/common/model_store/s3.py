"""Versions in an S3 bucket (AWS S3, MinIO, Ceph RGW): `s3://bucket/prefix/<version>/...`.

The client is configured from the environment TF Serving's own S3 file system reads
(tensorflow/core/platform/s3/s3_file_system.cc), so one env block or Secret serves the server and
the trainer: `S3_ENDPOINT` (host:port of MinIO or Ceph RGW; a URL with a scheme works too),
`S3_USE_HTTPS` (0: plain HTTP), `S3_VERIFY_SSL` (0: no certificate check), `AWS_REGION`, and the
credentials boto3 finds itself (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a web identity token
from IRSA, a profile). With an endpoint override, requests use path-style addressing, as MinIO
and RGW expect.

Why `publish` uploads the way it does. S3 has no rename, and TF Serving finds versions by polling
(tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc): every
`--file_system_poll_wait_seconds` it lists the base path (GetChildren, which on object stores
returns every key below it, cut at the first `/`), and any child whose name parses as an integer
is a version, whether or not it holds a SavedModel yet. Under the default `latest` policy the
highest one is loaded at once; loading reads `saved_model.pb` first and fails with NOT_FOUND
("Could not find SavedModel .pb or .pbtxt") while it is missing, after which the manager retries
only `--max_num_load_retries` times (5), a minute apart (`--load_retry_interval_micros`). So:

1. every file is uploaded under a temporary prefix `.<version>.partial-<id>/`, whose name is not
   an integer (ParseVersionNumber skips it): the slow, failure-prone part over the network, which
   a crash or a kill leaves as an ignored prefix, never as a version;
2. the objects are copied server-side into `<version>/`, `saved_model.pb` last: a poll in that
   short window may see the version without its graph (one failed load, retried), but once
   `saved_model.pb` is visible everything it refers to is there (S3 reads after writes are
   strongly consistent);
3. the temporary prefix is deleted. On any failure, what was copied into `<version>/` is deleted
   too, so no integer-named prefix is left.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from headbits.common.model_repository import METADATA_FILE
from headbits.common.model_store.base import ModelStore, StoreError

GRAPH_FILE = "saved_model.pb"
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


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at either end)."""
    if not url.startswith("s3://"):
        raise StoreError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise StoreError(f"{url!r} names no bucket (s3://bucket/prefix)")
    return bucket, prefix.strip("/")


class S3Store(ModelStore):
    """One model's versions under `s3://bucket/prefix` (its TF Serving base_path)."""

    def __init__(self, url: str, client=None) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.base_path = f"s3://{self.bucket}/{self.prefix}" if self.prefix else \
            f"s3://{self.bucket}"
        self._client = client or client_from_environment()

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

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

    def _keys(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("listing", "list_objects_v2", Bucket=self.bucket,
                              Prefix=prefix, **extra)
            keys += [item["Key"] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return keys

    def _children(self) -> list[str]:
        names, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("listing", "list_objects_v2", Bucket=self.bucket,
                              Prefix=self._key("") + "/" if self.prefix else "",
                              Delimiter="/", **extra)
            names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                      for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return names

    def version_names(self) -> list[int]:
        return sorted(int(name) for name in self._children() if name.isdigit())

    def read_metadata(self, version: int) -> dict:
        key = self._key(str(version), METADATA_FILE.as_posix())
        answer = self._call(f"reading {key}", "get_object", Bucket=self.bucket, Key=key)
        return json.loads(answer["Body"].read().decode("utf-8"))

    def publish(self, staging: Path, version: int) -> str:
        if version < 1:
            raise ValueError(f"model versions are positive integers, not {version}")
        if version in self.version_names():
            raise FileExistsError(f"{self.location(version)} already exists: versions are "
                                  "never overwritten")
        files = sorted((p.relative_to(staging).as_posix() for p in Path(staging).rglob("*")
                        if not p.is_dir()), key=lambda name: (name == GRAPH_FILE, name))
        temporary = f".{version}.partial-{uuid.uuid4().hex[:12]}"
        copied: list[str] = []
        try:
            for name in files:
                self._upload(Path(staging) / name, self._key(temporary, name))
            for name in files:  # saved_model.pb last (module docstring)
                target = self._key(str(version), name)
                # One CopyObject per file (objects up to 5 GB; a version is a few MB).
                self._call(f"copying {name}", "copy_object", Bucket=self.bucket, Key=target,
                           CopySource={"Bucket": self.bucket, "Key": self._key(temporary, name)})
                copied.append(target)
        except BaseException as error:
            self._clean_up(version, copied, temporary, error)
            raise
        self._clean_up(version, [], temporary, None)
        return self.location(version)

    def _clean_up(self, version: int, copied: list[str], temporary: str,
                  error: BaseException | None) -> None:
        """Delete what a publish copied into place (after a failure) and its temporary prefix.

        After a failure, a cleanup that fails too (the store became unreachable) is added to the
        first error as a note naming what to delete, rather than hiding it.
        """
        try:
            self._delete(copied)
            self._delete(self._keys(self._key(temporary) + "/"))
        except StoreError as cleanup:
            if error is None:
                raise
            left = f" and {self.location(version)}/" if copied else ""
            error.add_note(f"cleaning up failed too ({cleanup}): delete "
                           f"{self.base_path}/{temporary}/{left}")

    def _upload(self, path: Path, key: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_file(str(path), self.bucket, key)
        except (ClientError, BotoCoreError, S3UploadFailedError) as error:
            raise StoreError(f"{self.base_path}: uploading {key}: {error} ({CHECK})") from error

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            self._call("deleting", "delete_objects", Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})

    def fetch(self, version: int, into: Path) -> Path:
        prefix = self._key(str(version)) + "/"
        keys = self._keys(prefix)
        if not keys:
            raise FileNotFoundError(f"no version {version} in {self.base_path}")
        target = Path(into) / str(version)
        for key in keys:
            path = target / key[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            answer = self._call(f"reading {key}", "get_object", Bucket=self.bucket, Key=key)
            path.write_bytes(answer["Body"].read())
        return target
