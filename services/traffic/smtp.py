"""SMTP: `smtplib` against aiosmtpd, one message per connection.

Clients vary their EHLO/HELO name, HELO versus EHLO, senders, recipients and message sizes;
the server varies the host name and software in its 220 greeting per connection.
"""

from __future__ import annotations

import contextlib
import logging
import random
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import LOOPBACK, free_port

GREETINGS = ("ESMTP Postfix (Debian/GNU)", "ESMTP Postfix", "ESMTP Exim 4.96",
             "Microsoft ESMTP MAIL Service ready", "ESMTP Sendmail 8.17.1/8.17.1",
             "ESMTP OpenSMTPD", "ESMTP ready")
SUBJECTS = ("Invoice", "Meeting notes", "Re: status", "Password reset", "Weekly report",
            "Your order has shipped", "Backup finished")


@dataclass(frozen=True)
class SmtpPlan:
    client_name: str
    use_ehlo: bool
    sender: str
    recipients: tuple[str, ...]
    subject: str
    body_lines: int
    transport: str = "tcp"


def plan(rng: random.Random) -> SmtpPlan:
    domain = names.domain(rng)
    return SmtpPlan(
        client_name=names.host_name(rng) if rng.random() < 0.85 else f"[{LOOPBACK}]",
        use_ehlo=rng.random() < 0.85,
        sender=f"{names.user_name(rng)}@{domain}",
        recipients=tuple(f"{names.user_name(rng)}@{names.domain(rng)}"
                         for _ in range(rng.randint(1, 3))),
        subject=rng.choice(SUBJECTS),
        body_lines=rng.randint(1, 40),
    )


class _Accept:
    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        return "250 2.0.0 Ok: queued"


class _GreetingController(Controller):
    """aiosmtpd makes one SMTP object per connection; each gets a greeting drawn from rng."""

    def __init__(self, rng: random.Random, port: int) -> None:
        super().__init__(_Accept(), hostname=LOOPBACK, port=port)
        self._rng = rng

    def factory(self) -> SMTP:
        return SMTP(self.handler, hostname=names.host_name(self._rng),
                    ident=self._rng.choice(GREETINGS))


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    controller = _GreetingController(rng, free_port())
    controller.start()
    try:
        yield {"tcp": (LOOPBACK, controller.port)}
    finally:
        controller.stop()


def talk(session: SmtpPlan, address: Address) -> bytes:
    """Returns the server's greeting text."""
    with smtplib.SMTP(*address, local_hostname=session.client_name, timeout=10) as client:
        greeting = client.ehlo() if session.use_ehlo else client.helo()
        body = "\r\n".join(f"line {number} of the report" for number in range(session.body_lines))
        message = (f"From: {session.sender}\r\nTo: {', '.join(session.recipients)}\r\n"
                   f"Subject: {session.subject}\r\n\r\n{body}\r\n")
        client.sendmail(session.sender, list(session.recipients), message)
    return greeting[1]


PROTOCOL = TrafficProtocol("smtp", 25, ("smtp",), serve, plan, talk)
