"""What every object store (S3, GCS) shares: TF Serving's layout over keys, and a safe publish.

An implementation supplies six primitives on its client (`_children`, `_keys`, `_read`,
`_upload`, `_copy`, `_delete`), each turning the client's failures into StoreError (or
FileNotFoundError for a missing object); this class builds the contract of base.py on them.

Why `publish` uploads the way it does. An object store has no rename, and TF Serving finds
versions by polling (tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc):
every `--file_system_poll_wait_seconds` it lists the base path (GetChildren, which on object
stores returns every key below it, cut at the first `/`), and any child whose name parses as an
integer is a version, whether or not it holds a SavedModel yet. Under the default `latest`
policy the highest one is loaded at once; loading reads `saved_model.pb` first and fails with
NOT_FOUND ("Could not find SavedModel .pb or .pbtxt", tensorflow/cc/saved_model/reader.cc) while
it is missing, after which the manager retries only `--max_num_load_retries` times (5), a minute
apart (`--load_retry_interval_micros`). So:

1. every file is uploaded under a temporary prefix `.<version>.partial-<id>/`, whose name is not
   an integer (ParseVersionNumber skips it): the slow, failure-prone part over the network, which
   a crash or a kill leaves as an ignored prefix, never as a version;
2. the objects are copied server-side into `<version>/`, `saved_model.pb` last: a poll in that
   short window may see the version without its graph (one failed load, retried), but once
   `saved_model.pb` is visible everything it refers to is there (S3 and GCS reads after writes
   are strongly consistent);
3. the temporary prefix is deleted. On any failure, what was copied into `<version>/` is deleted
   too, so no integer-named prefix is left.
"""

from __future__ import annotations

import json
import uuid
from abc import abstractmethod
from pathlib import Path

from headbits.common.model_repository import METADATA_FILE
from headbits.common.model_store.base import ModelStore, StoreError

GRAPH_FILE = "saved_model.pb"


def parse_url(url: str, scheme: str) -> tuple[str, str]:
    """`<scheme>://bucket/prefix` -> (bucket, prefix without slashes at either end)."""
    if not url.startswith(f"{scheme}://"):
        raise StoreError(f"{url!r} is not a {scheme}://bucket/prefix URL")
    bucket, _, prefix = url[len(scheme) + 3:].partition("/")
    if not bucket:
        raise StoreError(f"{url!r} names no bucket ({scheme}://bucket/prefix)")
    return bucket, prefix.strip("/")


class BucketStore(ModelStore):
    """One model's versions under `<scheme>://bucket/prefix` (its TF Serving base_path)."""

    scheme: str

    def __init__(self, url: str) -> None:
        self.bucket, self.prefix = parse_url(url, self.scheme)
        self.base_path = f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix
                                                             else "")

    # The client's primitives; keys are full object names in self.bucket.
    @abstractmethod
    def _children(self, prefix: str) -> list[str]:
        """Names of the "directories" right below `prefix` (which ends with / or is empty)."""

    @abstractmethod
    def _keys(self, prefix: str) -> list[str]:
        """Every key below `prefix`."""

    @abstractmethod
    def _read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""

    @abstractmethod
    def _upload(self, path: Path, key: str) -> None: ...

    @abstractmethod
    def _copy(self, source: str, target: str) -> None:
        """A server-side copy."""

    @abstractmethod
    def _delete(self, keys: list[str]) -> None: ...

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def version_names(self) -> list[int]:
        below = self._key("") + "/" if self.prefix else ""
        return sorted(int(name) for name in self._children(below) if name.isdigit())

    def read_metadata(self, version: int) -> dict:
        return json.loads(self._read(self._key(str(version), METADATA_FILE.as_posix()))
                          .decode("utf-8"))

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
                self._copy(self._key(temporary, name), target)
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

    def fetch(self, version: int, into: Path) -> Path:
        prefix = self._key(str(version)) + "/"
        keys = self._keys(prefix)
        if not keys:
            raise FileNotFoundError(f"no version {version} in {self.base_path}")
        target = Path(into) / str(version)
        for key in keys:
            path = target / key[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self._read(key))
        return target
