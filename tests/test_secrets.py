"""Secrets (the SASL password, the registry's basic auth) never appear in `--help`, in error
messages or in logs: each is grepped for in the real outputs of `headbits <verb>`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headbits.common.kafka import KafkaSettings
from headbits.common.settings import Secret, SettingsError, load_settings

PASSWORD = "pw-7f3a9c1e-never-shown"
REGISTRY_AUTH = "registry-user:ra-51b2d8e0-never-shown"
SECRET_ENV = {"HEADBITS_SASL_PASSWORD": PASSWORD, "HEADBITS_SCHEMA_REGISTRY_AUTH": REGISTRY_AUTH}


def headbits(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headbits.cli", *args], check=False,
                          capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=timeout)


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert REGISTRY_AUTH not in text and "ra-51b2d8e0" not in text


def test_secret_values_are_typed_and_hidden():
    settings = load_settings(KafkaSettings, environ=SECRET_ENV)
    assert isinstance(settings.sasl_password, Secret)
    assert settings.sasl_password.reveal() == PASSWORD
    assert_no_secret(repr(settings) + str(settings) + f"{settings.schema_registry_auth}")
    with pytest.raises(SettingsError) as caught:
        load_settings(KafkaSettings, environ={**SECRET_ENV, "HEADBITS_PRODUCER_BUFFER_MB": "x"})
    assert_no_secret(str(caught.value))


@pytest.mark.parametrize("command", ["collector", "featurizer", "scorer", "trainer",
                                     "alerts tail", "alerts mark", "rules add", "rules list"])
def test_help_shows_no_secret(command: str):
    result = headbits(*command.split(), "--help", env=SECRET_ENV)
    assert result.returncode == 0, result.stderr
    assert "--sasl-password SECRET" in result.stdout
    assert_no_secret(result.stdout + result.stderr)


def test_a_settings_error_shows_no_secret():
    result = headbits("featurizer", env={**SECRET_ENV, "HEADBITS_BATCH_SIZE": "many"})
    assert result.returncode == 2
    assert "HEADBITS_BATCH_SIZE" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


@pytest.mark.kafka
def test_logs_of_a_refused_sasl_login_show_no_secret(kafka_bootstrap, tmp_path: Path):
    """A featurizer whose SASL login cannot succeed (the broker's plaintext listener does not
    speak SASL) logs its client errors as JSON lines at debug level: none holds the secret."""
    log_path = tmp_path / "featurizer.log"
    env = {**os.environ, **SECRET_ENV, "HEADBITS_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "HEADBITS_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "HEADBITS_SASL_MECHANISM": "SCRAM-SHA-512", "HEADBITS_SASL_USERNAME": "headbits",
           "HEADBITS_LOG_LEVEL": "debug", "HEADBITS_METRICS_PORT": "-1",
           "HEADBITS_SCHEMA_REGISTRY_AUTH": REGISTRY_AUTH}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "headbits.cli", "featurizer"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if log_path.read_text(errors="replace").count("\n") >= 3:
                break
            time.sleep(0.5)
        time.sleep(3)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(60)
    text = log_path.read_text(errors="replace")
    assert text.count("\n") >= 1, "the service logged nothing"
    assert_no_secret(text)
