"""FTP: `ftplib` against pyftpdlib, control connection only.

Clients vary user names, passwords and the commands after login; the server varies its 220
banner per connection. Passive data connections go straight to the server, not through the
relay: only the control connection (port 21) is recorded, as an `ftp` flow.
"""

from __future__ import annotations

import contextlib
import ftplib
import logging
import random
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import LOOPBACK

BANNERS = ("(vsFTPd 3.0.3)", "ProFTPD Server (Debian) [::ffff:10.0.0.5]",
           "Microsoft FTP Service", "FileZilla Server 1.8.0", "Pure-FTPd [privsep] [TLS]",
           "pyftpdlib ready.")
COMMANDS = ("PWD", "SYST", "FEAT", "TYPE I", "NOOP", "STAT", "HELP", "LIST")


@dataclass(frozen=True)
class FtpPlan:
    user: str
    password: str
    commands: tuple[str, ...]
    transport: str = "tcp"


def plan(rng: random.Random) -> FtpPlan:
    user = names.user_name(rng)
    password = "guest@example.com" if user == "anonymous" else f"pw{rng.randint(1000, 9999)}"
    return FtpPlan(user, password, names.sample_ordered(rng, COMMANDS)[:4])


class _AnyUser(DummyAuthorizer):
    """Every user logs in to one read-only, empty home directory."""

    def __init__(self, home: str) -> None:
        super().__init__()
        self._home = home

    def validate_authentication(self, username, password, handler) -> None:
        """Everyone is welcome."""

    def get_home_dir(self, username) -> str:
        return self._home

    def has_perm(self, username, perm, path=None) -> bool:
        return perm in "elr"

    def get_msg_login(self, username) -> str:
        return f"Login successful, {username}."

    def get_msg_quit(self, username) -> str:
        return "Goodbye."

    def impersonate_user(self, username, password) -> None:
        """Nothing to switch to."""

    def terminate_impersonation(self, username) -> None:
        """Nothing to switch back from."""


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    # A handler of our own keeps pyftpdlib from installing its console logging on start.
    ftp_log = logging.getLogger("pyftpdlib")
    ftp_log.setLevel(logging.ERROR)
    if not ftp_log.handlers:
        ftp_log.addHandler(logging.NullHandler())
    with tempfile.TemporaryDirectory(prefix="headbits-ftp-") as home:

        class Handler(FTPHandler):
            authorizer = _AnyUser(home)

            def handle(self) -> None:
                self.banner = rng.choice(BANNERS)
                super().handle()

        server = FTPServer((LOOPBACK, 0), Handler)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                server.serve_forever(timeout=0.05, blocking=False)
            server.close_all()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield {"tcp": server.address[:2]}
        finally:
            stop.set()
            thread.join(5)


def talk(session: FtpPlan, address: Address) -> str:
    """Returns the server's welcome line."""
    client = ftplib.FTP(timeout=10)
    # The PASV address is the server's own; the control peer is the relay, which has no data port.
    client.trust_server_pasv_ipv4_address = True
    try:
        welcome = client.connect(*address)
        client.login(session.user, session.password)
        for command in session.commands:
            if command == "LIST":
                client.retrlines("LIST", lambda line: None)
            else:
                client.sendcmd(command)
        client.quit()
    finally:
        client.close()
    return welcome


PROTOCOL = TrafficProtocol("ftp", 21, ("ftp",), serve, plan, talk)
