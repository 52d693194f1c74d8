"""A stand-in for Google Cloud Storage in tests: gcp-storage-emulator, over GCS's JSON API.

A development stand-in: GCS itself cannot run here. The emulator answers the JSON API's object
listing (with prefixes and delimiters), media uploads, downloads, rewrites (copies) and deletes
on loopback, in memory, and the google-cloud-storage client points at it by
`STORAGE_EMULATOR_HOST`, so the model store's production client talks to it unchanged. Unlike
S3's stand-in it checks no credentials: the tests of missing credentials run without it.
Production points `model_store` at a real gs:// bucket.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

from headbits.devtools.loopback_server import free_port, start_listening, stop_process

PROJECT = "headbits-tests"


@dataclass
class GCSStandin:
    host: str = "127.0.0.1"
    port: int = 0
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The client library's variables that point it here."""
        return {"STORAGE_EMULATOR_HOST": self.url, "GOOGLE_CLOUD_PROJECT": PROJECT}

    def start(self, timeout: float = 30.0) -> GCSStandin:
        self.port = free_port(self.host)
        self._process = start_listening(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", self.host,
             "--port", str(self.port), "--in-memory"],
            self.host, self.port, "the GCS emulator", timeout)
        return self

    def client(self):
        """A client of the emulator (for creating buckets in tests)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None
