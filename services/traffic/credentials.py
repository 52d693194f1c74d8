"""Self-signed TLS certificates made at run time, once per process (no key material shipped)."""

from __future__ import annotations

import datetime
import functools
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_KEEP_ALIVE: list[tempfile.TemporaryDirectory] = []


def _self_signed(key, common_name: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@functools.cache
def tls_certificate_files() -> tuple[tuple[Path, Path], ...]:
    """(certificate, key) PEM file pairs, one ECDSA P-256 and one RSA-2048.

    Both go into one server context, so the suites a client offers decide which is used, as
    with real servers that hold both. The files live in a temporary directory kept for the
    process's lifetime (`ssl` loads certificates only from files).
    """
    folder = tempfile.TemporaryDirectory(prefix="headbits-certs-")
    _KEEP_ALIVE.append(folder)
    pairs = []
    keys = {"ecdsa": ec.generate_private_key(ec.SECP256R1()),
            "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    for kind, key in keys.items():
        cert_file = Path(folder.name) / f"{kind}.crt"
        key_file = Path(folder.name) / f"{kind}.key"
        cert_file.write_bytes(_self_signed(key, f"{kind}.headbits.test"))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        pairs.append((cert_file, key_file))
    return tuple(pairs)
