"""Versions in a directory: a local disk or a volume every TF Serving replica mounts.

A version appears atomically: it is exported into a temporary directory beside the versions,
whose name is not an integer so TF Serving ignores it, and renamed into place only when complete
(a rename within one file system is atomic).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from headbits.common.model_repository import read_metadata, version_dirs
from headbits.common.model_store.base import ModelStore


class VolumeStore(ModelStore):
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.base_path = str(self.model_dir.resolve())

    def version_names(self) -> list[int]:
        return sorted(version_dirs(self.model_dir))

    def read_metadata(self, version: int) -> dict:
        return read_metadata(self.model_dir / str(version))

    def _staging_parent(self) -> Path:
        """Beside the versions, so that `publish` is a rename."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        return self.model_dir

    def publish(self, staging: Path, version: int) -> str:
        if version < 1:
            raise ValueError(f"model versions are positive integers, not {version}")
        target = self.model_dir / str(version)
        if target.exists():
            raise FileExistsError(f"{target} already exists: versions are never overwritten")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(staging)
        if staging.parent.resolve() != self.model_dir.resolve():  # another file system, maybe
            with self.staging(version) as beside:
                copy = beside / "version"
                shutil.copytree(staging, copy)
                self._rename(copy, target)
        else:
            self._rename(staging, target)
        return str(target)

    @staticmethod
    def _rename(source: Path, target: Path) -> None:
        os.chmod(source, 0o755)  # mkdtemp makes it private; the model server may be another user
        os.rename(source, target)

    def fetch(self, version: int, into: Path) -> Path:
        path = self.model_dir / str(version)
        if not path.is_dir():
            raise FileNotFoundError(f"no version {version} in {self.model_dir}")
        return path
