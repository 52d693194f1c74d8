"""SSH: paramiko on both sides, password login and one exec request.

Clients vary their version string (the first bytes a sensor sees), key-exchange, cipher, MAC
and host-key algorithm offers and their order, user names and commands. The server varies its
version string per connection; host keys (Ed25519, ECDSA, RSA) are made once per process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import serve_tcp

CLIENT_VERSIONS = (
    "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5", "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10",
    "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", "SSH-2.0-OpenSSH_for_Windows_9.5",
    "SSH-2.0-OpenSSH_9.8", "SSH-2.0-PuTTY_Release_0.81", "SSH-2.0-paramiko_3.4.0",
    "SSH-2.0-Go", "SSH-2.0-libssh2_1.11.0", "SSH-2.0-WinSCP_release_6.3.3",
    "SSH-2.0-JSCH-0.1.54", "SSH-2.0-AsyncSSH_2.14.2",
)
SERVER_VERSIONS = (
    "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5", "SSH-2.0-OpenSSH_8.4p1 Debian-5+deb11u3",
    "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", "SSH-2.0-OpenSSH_7.4", "SSH-2.0-dropbear_2022.83",
    "SSH-2.0-OpenSSH_8.0",
)
# Algorithms paramiko implements on both sides without extra server files (no group-exchange
# moduli) and fast enough in pure Python (no 4096-bit and larger groups).
KEX = ("mlkem768x25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256",
       "ecdh-sha2-nistp384", "ecdh-sha2-nistp521", "diffie-hellman-group14-sha256")
CIPHERS = ("aes128-ctr", "aes192-ctr", "aes256-ctr", "aes128-gcm@openssh.com",
           "aes256-gcm@openssh.com")
MACS = ("hmac-sha2-256", "hmac-sha2-512", "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com", "hmac-sha1")
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
COMMANDS = ("uname -a", "id", "uptime", "ls -la /var/log", "cat /etc/os-release", "df -h",
            "systemctl status nginx", "whoami")


@dataclass(frozen=True)
class SshPlan:
    client_version: str
    kex: tuple[str, ...]
    ciphers: tuple[str, ...]
    macs: tuple[str, ...]
    host_key_types: tuple[str, ...]
    user: str
    command: str
    transport: str = "tcp"


def plan(rng: random.Random) -> SshPlan:
    return SshPlan(
        client_version=rng.choice(CLIENT_VERSIONS),
        kex=names.sample_ordered(rng, KEX),
        ciphers=names.sample_ordered(rng, CIPHERS),
        macs=names.sample_ordered(rng, MACS),
        host_key_types=names.sample_ordered(rng, HOST_KEY_TYPES),
        user=names.user_name(rng),
        command=rng.choice(COMMANDS),
    )


@functools.cache
def host_keys() -> tuple[paramiko.PKey, ...]:
    openssh_ed25519 = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return (
        paramiko.Ed25519Key(file_obj=io.StringIO(openssh_ed25519.decode())),
        paramiko.ECDSAKey.generate(),
        paramiko.RSAKey.generate(2048),
    )


class _AcceptEveryone(paramiko.ServerInterface):
    """A server that lets any password in and runs nothing: the bytes are what matter."""

    def __init__(self) -> None:
        self.exec_requested = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_password(self, username: str, password: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED_OPEN_REQUEST

    def check_channel_exec_request(self, channel, command: bytes) -> bool:
        self.exec_requested.set()
        return True


def _handle(server_version: str, connection: socket.socket) -> None:
    transport = paramiko.Transport(connection)
    transport.local_version = server_version
    for key in host_keys():
        transport.add_server_key(key)
    interface = _AcceptEveryone()
    try:
        transport.start_server(server=interface)
        channel = transport.accept(10)
        if channel is not None and interface.exec_requested.wait(10):
            channel.sendall(b"Linux host 6.1.0-21-amd64 #1 SMP x86_64 GNU/Linux\n")
            channel.send_exit_status(0)
            channel.close()
        transport.join(15)  # until the client disconnects; the socket closes after this
    finally:
        transport.close()


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    lock = threading.Lock()

    def handle(connection: socket.socket) -> None:
        with lock:
            server_version = rng.choice(SERVER_VERSIONS)
        _handle(server_version, connection)

    host_keys()
    with serve_tcp(handle) as address:
        yield {"tcp": address}


def talk(session: SshPlan, address: Address) -> str:
    """Returns the server's version string."""
    transport = paramiko.Transport(socket.create_connection(address, timeout=10))
    transport.local_version = session.client_version
    options = transport.get_security_options()
    options.kex = session.kex
    options.ciphers = session.ciphers
    options.digests = session.macs
    options.key_types = session.host_key_types
    try:
        transport.start_client(timeout=10)
        transport.auth_password(session.user, "not-a-secret")
        channel = transport.open_session(timeout=10)
        channel.exec_command(session.command)
        while channel.recv(4096):
            pass
        channel.close()
        return transport.remote_version
    finally:
        transport.close()


PROTOCOL = TrafficProtocol("ssh", 22, ("ssh",), serve, plan, talk)
