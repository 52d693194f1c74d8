"""The model store seam: where model versions are published and listed.

A store holds one model's versions in TF Serving's layout under one base path, the model's
`base_path` in TF Serving's config: `<base>/<version>/` is a SavedModel with
`assets.extra/headbits.json`. TF Serving's file-system source treats every integer-named child of
the base path as a version, so the whole contract is about that name:

- `version_names()` lists every integer-named child, complete or not: what TF Serving would see.
  The next version number comes from it (`next_version()`), never from a local directory, so a
  version left behind by an interrupted publish is never written over.
- `publish(staging, version)` makes the complete local SavedModel directory `staging` version
  `version`. A failure leaves no `<version>` child; how each store keeps a poll from loading a
  half-written version is its own docstring's business. A version that exists is refused with
  FileExistsError: versions are never overwritten.
- `read_metadata(version)` is the version's headbits.json (FileNotFoundError if it has none).
- `fetch(version, into)` is a local directory holding the version, for loading it in-process
  (the trainer scores the current stable version); it stays valid while `into` exists.

Every failure to reach or use the store (credentials, endpoint, bucket) is a StoreError whose
message names the store and what to check.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headbits.common.model_repository import ModelVersion, RepositoryError


class StoreError(RepositoryError):
    """The store cannot be reached or used; the message names it and what to check."""


class ModelStore(ABC):
    """One model's versions, wherever they are kept."""

    #: The model's base path as TF Serving is given it (a directory or a bucket URL).
    base_path: str

    @abstractmethod
    def version_names(self) -> list[int]:
        """Every integer-named child of the base path, ascending, complete or not."""

    @abstractmethod
    def read_metadata(self, version: int) -> dict:
        """The version's headbits.json; FileNotFoundError if it has none."""

    @abstractmethod
    def publish(self, staging: Path, version: int) -> str:
        """Make the SavedModel directory `staging` version `version`; return where it is."""

    @abstractmethod
    def fetch(self, version: int, into: Path) -> Path:
        """A local directory holding the version, valid while `into` exists."""

    @contextmanager
    def staging(self, version: int) -> Iterator[Path]:
        """A local directory to export version `version` into before `publish`; removed after.

        Its name is not an integer, so were it beside the versions, TF Serving would ignore it.
        """
        directory = Path(tempfile.mkdtemp(prefix=f".{version}.partial-",
                                          dir=self._staging_parent()))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _staging_parent(self) -> Path | None:
        """Where staging directories are made (None: the system's temporary directory)."""
        return None

    def next_version(self) -> int:
        """One more than the highest integer-named child."""
        return max(self.version_names(), default=0) + 1

    def location(self, version: int) -> str:
        return f"{self.base_path}/{version}"

    def list_versions(self) -> list[ModelVersion]:
        """The versions TF Serving would see, oldest first, each with its headbits.json (or the
        reason it cannot be read, under "error")."""
        versions = []
        for version in self.version_names():
            try:
                metadata = self.read_metadata(version)
            except (OSError, ValueError) as error:
                metadata = {"error": str(error)}
            versions.append(ModelVersion(version, self.location(version), metadata))
        return versions
