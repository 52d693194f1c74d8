"""A throw-away certificate authority for development and tests (never production).

The TLS links (Kafka SASL_SSL, gRPC to TF Serving, `wss://` to Zeek) are tested with real TLS, so
they need certificates; none is shipped. `make_pki` makes a fresh CA and issues a server
certificate for the loopback names plus client certificates, all as PEM files in one folder.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Pki:
    """The CA's certificate and the identities it issued."""

    ca_file: Path
    server: Identity
    clients: dict[str, Identity]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alternative_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def make_pki(folder: Path, clients: tuple[str, ...] = ("headbits",),
             server_names: tuple[str, ...] = LOOPBACK_NAMES, days: int = 2) -> Pki:
    """A new CA in `folder` (ca.pem), a server certificate for `server_names` and one client
    certificate per name in `clients` (its common name), each valid for `days` days."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("headbits development CA")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, common_name: str, usage: x509.ObjectIdentifier,
              names: tuple[str, ...]) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_alternative_names(names)), critical=False)
        certificate = builder.sign(ca_key, hashes.SHA256())
        identity = Identity(folder / f"{stem}.pem", folder / f"{stem}.key")
        identity.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        identity.key_file.write_bytes(_key_pem(key))
        identity.key_file.chmod(0o600)
        return identity

    server = issue("server", server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, server_names)
    issued = {name: issue(f"client-{name}", name, ExtendedKeyUsageOID.CLIENT_AUTH, ())
              for name in clients}
    return Pki(ca_file, server, issued)
