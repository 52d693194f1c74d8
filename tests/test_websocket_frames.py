"""The WebSocket source's frame splitter against the websockets protocol it short-cuts.

Server frames are made by the websockets library itself; the splitter must yield the messages a
plain websockets client yields from the same bytes, however `recv` cuts them, and leave every
frame out of the ordinary (and every protocol error) to the protocol.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from headbits.collector.sources.websocket import FrameSplitter, _messages

MAX_SIZE = 1 << 20


def open_client() -> ClientProtocol:
    """A client protocol past a real upgrade with a websockets server protocol, in memory."""
    client = ClientProtocol(parse_uri("ws://zeek:27759/v1/messages/json"), max_size=MAX_SIZE)
    server = ServerProtocol()
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    server.send_response(server.accept(server.events_received()[0]))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert client.state is State.OPEN
    return client


def frame(opcode: Opcode, data: bytes, fin: bool = True, mask: bool = False) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=mask, extensions=[])


def text(data: bytes) -> bytes:
    return frame(Opcode.TEXT, data)


STREAM = b"".join([
    text(b'{"type":"data-message","n":1}'),
    text(b"x" * 126),  # the 16-bit length form
    text(b"y" * 70_000),  # the 64-bit length form
    frame(Opcode.TEXT, b'{"part":', fin=False),
    frame(Opcode.PING, b"are you there"),  # a control frame between fragments
    frame(Opcode.CONT, b'"one",', fin=False),
    frame(Opcode.CONT, b'"two":2}'),
    frame(Opcode.BINARY, b"\x00\x01binary"),
    text(b"after the fragments"),
])


def reference(stream: bytes) -> tuple[list, ClientProtocol]:
    client = open_client()
    client.receive_data(stream)
    return _messages(client.events_received(), []), client


def split(stream: bytes, cuts: list[int]) -> tuple[list, FrameSplitter]:
    splitter = FrameSplitter(open_client(), MAX_SIZE)
    messages = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        messages += splitter.receive(stream[start:cut])
        start = cut
    return messages, splitter


def test_the_messages_are_the_protocols_and_pings_are_answered() -> None:
    expected, plain = reference(STREAM)
    messages, splitter = split(STREAM, [])
    assert messages == expected
    assert [data[:8] for _, data in messages] == [
        b'{"type":', b"x" * 8, b"y" * 8, b'{"part":', b"\x00\x01binary", b"after th"]
    assert messages[3] == (True, b'{"part":"one","two":2}')
    assert messages[4][0] is False
    pong = b"".join(splitter.protocol.data_to_send())
    assert (pong[0], pong[1] & 0x7F) == (0x8A, len(b"are you there"))  # final pong, masked
    assert len(pong) == len(b"".join(plain.data_to_send()))


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_cut_of_the_stream_gives_the_same_messages(cuts: list[int]) -> None:
    assert split(STREAM, cuts)[0] == reference(STREAM)[0]


def test_a_masked_server_frame_fails_the_connection_and_is_not_delivered() -> None:
    messages, splitter = split(text(b"fine") + frame(Opcode.TEXT, b"masked", mask=True)
                               + text(b"never"), [])
    assert messages == [(True, b"fine")]
    assert splitter.protocol.close_sent.code == 1002  # protocol error
    assert splitter.protocol.close_expected()


def test_a_frame_over_the_limit_fails_the_connection_without_being_buffered() -> None:
    header = frame(Opcode.TEXT, b"z" * (MAX_SIZE + 1))[:10]  # only the header has arrived
    messages, splitter = split(text(b"fine") + header, [])
    assert messages == [(True, b"fine")]
    assert splitter.protocol.close_sent.code == 1009  # message too big
    assert splitter.protocol.close_expected()
    assert splitter.receive(b"z" * 1000) == []


def test_nothing_after_a_close_frame_is_delivered() -> None:
    close = Frame(Opcode.CLOSE, b"\x03\xe8bye").serialize(mask=False, extensions=[])
    messages, splitter = split(text(b"before") + close + text(b"after"), [])
    assert messages == [(True, b"before")]
    assert (splitter.protocol.close_rcvd.code, splitter.protocol.close_rcvd.reason) == (1000, "bye")


def test_a_stream_cut_short_is_left_to_the_protocol() -> None:
    splitter = FrameSplitter(open_client(), MAX_SIZE)
    assert splitter.receive(text(b"whole") + text(b"cut short")[:5]) == [(True, b"whole")]
    assert splitter.receive_eof() == []
    assert splitter.protocol.state is State.CLOSED
