"""TLS to TF Serving (its `--ssl_config_file`): the settings and the gRPC channel credentials.

Shared by everything that calls TF Serving over gRPC: the scorer's `Predict` and `headbits
model`'s status, wait and reload calls, so both reach a TLS or mutual-TLS server with the same
five settings under the same names. grpc is imported only when a channel is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headbits.common.settings import SettingsError, setting


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files for a TLS channel; without a CA file the system roots are used."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def credentials(self):
        import grpc

        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class ServingTLS:
    """The TLS settings of a gRPC client of TF Serving."""

    serving_tls: bool = setting(False, "TLS to TF Serving (its --ssl_config_file)")
    serving_ca_file: Path | None = setting(
        None, "TLS: CA that signed TF Serving's certificate (unset: system roots)")
    serving_cert_file: Path | None = setting(
        None, "TLS: client certificate, for mutual TLS (TF Serving's client_verify)")
    serving_key_file: Path | None = setting(None, "TLS: the client certificate's key")
    serving_server_name: str | None = setting(
        None, "TLS: name to verify in TF Serving's certificate (unset: the host)")

    def serving_tls_files(self) -> TLSFiles | None:
        """The TLS files, or None for plaintext; files without `serving_tls` are refused, so a
        forgotten switch never silently sends plaintext."""
        if self.serving_tls:
            return TLSFiles(self.serving_ca_file, self.serving_cert_file, self.serving_key_file,
                            self.serving_server_name)
        if self.serving_cert_file or self.serving_ca_file or self.serving_key_file:
            raise SettingsError("--serving-ca-file/--serving-cert-file/--serving-key-file need "
                                "--serving-tls true (HEADBITS_SERVING_TLS)")
        return None


def open_channel(target: str, tls: TLSFiles | None = None, options: list | None = None):
    """A gRPC channel to `target`, TLS when `tls` is given (the server name overridden if set)."""
    import grpc

    options = list(options or [])
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)
