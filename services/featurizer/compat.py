"""The capstone's normalisation and training-data format, reproduced once so results compare.

The capstone fed its autoencoder `content_to_features(hex_line, number_of_bytes)`: the hex line
right-padded with the character "0" to 2N digits, cut to 2N digits, 8 bits per byte, most
significant first. Padding therefore turns missing bytes into 0x00 bytes. Its training data is a
folder with one file per port or protocol name and one hex line per connection (the originator's
first bytes).

`content_to_features` below is the reference implementation (slow, per bit, kept verbatim in
behaviour); `read_hex_folder` + `compat_batch` give the same bits through the vectorised path.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headbits.featurizer.bits import HeadBatch, check_n, pack_heads

_HEX_DIGITS = frozenset(string.hexdigits)


def content_to_features(hex_line: str, number_of_bytes: int = 8) -> list[int]:
    """The capstone's function: hex string -> list of 8*N bits (0/1), zero-padded, MSB first."""
    padded = hex_line.ljust(number_of_bytes * 2, "0")[: number_of_bytes * 2]
    bits = []
    for i in range(0, len(padded), 2):
        byte = int(padded[i : i + 2], 16)
        bits.extend((byte & (1 << shift)) >> shift for shift in (7, 6, 5, 4, 3, 2, 1, 0))
    return bits


class HexLineError(ValueError):
    """A line of a capstone hex file that is not whole bytes of hex; names file and line."""


def parse_hex_line(line: str, where: str) -> bytes:
    """One connection's bytes from a hex line; raise HexLineError saying what is wrong."""
    text = line.strip()
    if not text:
        raise HexLineError(f"{where}: empty line (a connection without payload)")
    bad = next((c for c in text if c not in _HEX_DIGITS), None)
    if bad is not None:
        raise HexLineError(f"{where}: {bad!r} is not a hex digit")
    if len(text) % 2:
        raise HexLineError(f"{where}: odd number of hex digits ({len(text)}), not whole bytes")
    return bytes.fromhex(text)


@dataclass
class HexFolder:
    """The payloads of a capstone training folder, grouped by file name (port or protocol)."""

    payloads: dict[str, list[bytes]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def rows(self) -> Iterator[tuple[str, bytes]]:
        for name, payloads in self.payloads.items():
            for payload in payloads:
                yield name, payload


def read_hex_folder(folder: Path) -> HexFolder:
    """Read every regular file of `folder`; bad lines are reported in `errors` and skipped."""
    result = HexFolder()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        payloads = result.payloads.setdefault(path.name, [])
        with path.open(encoding="ascii", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    payloads.append(parse_hex_line(line, f"{path}:{number}"))
                except HexLineError as error:
                    result.errors.append(str(error))
    return result


def compat_batch(payloads: list[bytes], n: int, mask_padding: bool = False) -> HeadBatch:
    """Payloads as the capstone saw them: originator only, zero-padded to N bytes.

    With `mask_padding=False` (the capstone's behaviour) the padding counts as seen bytes, so the
    bits equal `content_to_features`. With True, padding is marked absent as everywhere else here.
    """
    check_n(n)
    batch = pack_heads(payloads, [b""] * len(payloads), n)
    if mask_padding:
        return batch
    lengths = batch.head_lengths.copy()
    lengths[:, 0] = n
    return HeadBatch(batch.head_bytes, lengths)


def compat_bits(payloads: list[bytes], n: int) -> np.ndarray:
    """uint8 [B, 8N]: exactly what `content_to_features` returns for each payload's hex."""
    batch = compat_batch(payloads, n)
    return np.unpackbits(batch.head_bytes[:, :n], axis=1)
