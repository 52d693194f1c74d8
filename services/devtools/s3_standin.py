"""A stand-in for S3 in tests: moto's standalone server, which speaks the S3 REST protocol.

A development stand-in: S3 itself cannot run here. moto's server (`python -m moto.server`) answers
the same HTTP requests, signatures and error codes as S3 (ListObjectsV2 with delimiters,
multipart uploads, CopyObject, DeleteObjects, InvalidAccessKeyId, SignatureDoesNotMatch), so the
model store's production client (boto3, configured from TF Serving's variables) talks to it
unchanged. Production points `model_store` at a real bucket (AWS S3, MinIO, Ceph RGW).

It runs with credentials enforced: moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests
through unsigned, which `start()` spends on creating one IAM user, its access key and a policy
allowing S3; every later request must be signed with that key, so wrong credentials fail as
they would against S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from headbits.devtools.loopback_server import free_port, start_listening, stop_process

SETUP_REQUESTS = 3  # create_user, create_access_key, put_user_policy
REGION = "us-east-1"


@dataclass
class S3Standin:
    host: str = "127.0.0.1"
    port: int = 0
    access_key_id: str = ""
    secret_access_key: str = ""
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """host:port, as TF Serving's S3_ENDPOINT takes it (with S3_USE_HTTPS=0)."""
        return f"{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The variables that point TF Serving's S3 client, and the model store's, here."""
        return {"S3_ENDPOINT": self.endpoint, "S3_USE_HTTPS": "0", "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key}

    def start(self, timeout: float = 30.0) -> S3Standin:
        self.port = free_port(self.host)
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
        self._process = start_listening(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            self.host, self.port, "moto's server", timeout, env)
        self._create_user()
        return self

    def _create_user(self) -> None:
        import boto3

        iam = boto3.client("iam", endpoint_url=f"http://{self.endpoint}", region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="trainer")
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]

    def client(self):
        """A client signed with the stand-in's key (for creating buckets in tests)."""
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name=REGION,
                            aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None
