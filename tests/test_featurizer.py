"""The vectorised featurizer (bits.py) and the capstone compatibility layer (compat.py), each
checked against an independent, deliberately slow per-byte reference written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headbits.featurizer.bits import (
    SUPPORTED_N,
    HeadBatch,
    bit_validity,
    model_inputs,
    ones_fraction,
    pack_heads,
    ternary_bits,
    unpack_bits,
)
from headbits.featurizer.compat import (
    HexLineError,
    compat_batch,
    compat_bits,
    content_to_features,
    parse_hex_line,
    read_hex_folder,
)

heads = st.lists(st.tuples(st.binary(max_size=80), st.binary(max_size=80)), max_size=25)
sizes = st.sampled_from(SUPPORTED_N)


def reference_bits(data: bytes) -> list[int]:
    return [int(digit) for byte in data for digit in format(byte, "08b")]


def reference_row(orig: bytes, resp: bytes, n: int) -> tuple[list[int], list[int]]:
    """(bits, validity) of one connection: n bytes per direction, absent bytes invalid."""
    bits, valid = [], []
    for head in (orig, resp):
        for position in range(n):
            present = position < len(head)
            bits += reference_bits(bytes([head[position] if present else 0]))
            valid += [int(present)] * 8
    return bits, valid


def reference_capstone(hex_line: str, n: int) -> list[int]:
    padded = (hex_line + "0" * 2 * n)[: 2 * n]
    return [int(d) for d in bin(int("1" + padded, 16))[3:]]  # leading 1 keeps leading zeros


@given(heads, sizes)
def test_pack_heads_matches_a_per_byte_reference(rows, n):
    batch = pack_heads([o for o, _ in rows], [r for _, r in rows], n)
    assert batch.head_bytes.dtype == np.uint8 and batch.head_bytes.shape == (len(rows), 2 * n)
    assert batch.head_lengths.dtype == np.int32 and batch.head_lengths.shape == (len(rows), 2)
    for i, (orig, resp) in enumerate(rows):
        expected = [orig[k] if k < len(orig) else 0 for k in range(n)]
        expected += [resp[k] if k < len(resp) else 0 for k in range(n)]
        assert batch.head_bytes[i].tolist() == expected
        assert batch.head_lengths[i].tolist() == [min(len(orig), n), min(len(resp), n)]


@given(heads, sizes)
def test_mutable_byte_buffers_pack_like_bytes(rows, n):
    orig, resp = [o for o, _ in rows], [r for _, r in rows]
    expected = pack_heads(orig, resp, n)
    actual = pack_heads([bytearray(o) for o in orig], [memoryview(r) for r in resp], n)
    np.testing.assert_array_equal(actual.head_bytes, expected.head_bytes)
    np.testing.assert_array_equal(actual.head_lengths, expected.head_lengths)


@given(heads, sizes)
def test_bits_mask_and_ternary_match_the_reference(rows, n):
    batch = pack_heads([o for o, _ in rows], [r for _, r in rows], n)
    bits, mask = model_inputs(batch)
    ternary = ternary_bits(batch)
    assert bits.dtype == mask.dtype == np.float32 and bits.shape == (len(rows), 16 * n)
    np.testing.assert_array_equal(bit_validity(batch.head_lengths, n), mask.astype(bool))
    for i, (orig, resp) in enumerate(rows):
        expected_bits, expected_valid = reference_row(orig, resp, n)
        assert unpack_bits(batch.head_bytes)[i].tolist() == expected_bits
        assert bits[i].tolist() == [b * v for b, v in zip(expected_bits, expected_valid,
                                                          strict=True)]
        assert mask[i].tolist() == expected_valid
        assert ternary[i].tolist() == [b if v else -1 for b, v in zip(expected_bits,
                                                                      expected_valid, strict=True)]


@given(heads, sizes)
def test_ones_fraction_counts_seen_bits_only(rows, n):
    batch = pack_heads([o for o, _ in rows], [r for _, r in rows], n)
    fractions = ones_fraction(batch)
    for i, (orig, resp) in enumerate(rows):
        seen = reference_bits(orig[:n]) + reference_bits(resp[:n])
        expected = sum(seen) / len(seen) if seen else 0.0
        assert fractions[i] == pytest.approx(expected, abs=1e-6)


@given(heads, st.sampled_from([(64, 8), (64, 16), (32, 8), (16, 16)]))
def test_truncate_equals_packing_at_the_smaller_n(rows, sizes_pair):
    wide_n, narrow_n = sizes_pair
    orig, resp = [o for o, _ in rows], [r for _, r in rows]
    truncated = pack_heads(orig, resp, wide_n).truncate(narrow_n)
    direct = pack_heads(orig, resp, narrow_n)
    np.testing.assert_array_equal(truncated.head_bytes, direct.head_bytes)
    np.testing.assert_array_equal(truncated.head_lengths, direct.head_lengths)
    assert truncated.head_lengths.dtype == np.int32


def test_pack_refuses_mismatched_directions_and_unsupported_n():
    with pytest.raises(ValueError, match="2 orig heads but 1 resp"):
        pack_heads([b"a", b"b"], [b""], 8)
    with pytest.raises(ValueError, match="not supported"):
        pack_heads([b"a"], [b""], 12)
    with pytest.raises(ValueError, match="cannot widen"):
        pack_heads([b"a"], [b""], 8).truncate(16)


def test_capstone_vector():
    """The capstone's own example: "160301" at N = 4 is the bits of 16 03 01 00."""
    expected = reference_bits(bytes([0x16, 0x03, 0x01, 0x00]))
    assert content_to_features("160301", 4) == expected
    assert expected[:8] == [0, 0, 0, 1, 0, 1, 1, 0]


@given(st.binary(max_size=70), st.sampled_from([1, 2, 4, *SUPPORTED_N]), st.booleans())
def test_content_to_features_matches_an_independent_reference(payload, n, upper):
    hex_line = payload.hex().upper() if upper else payload.hex()
    assert content_to_features(hex_line, n) == reference_capstone(hex_line, n)
    assert len(content_to_features(hex_line, n)) == 8 * n


@given(st.lists(st.binary(max_size=70), max_size=20), sizes)
def test_vectorised_compat_bits_equal_the_capstone_function(payloads, n):
    bits = compat_bits(payloads, n)
    assert bits.shape == (len(payloads), 8 * n)
    for i, payload in enumerate(payloads):
        assert bits[i].tolist() == content_to_features(payload.hex(), n)


@given(st.lists(st.binary(max_size=70), min_size=1, max_size=20), sizes)
def test_compat_batch_marks_padding_only_when_asked(payloads, n):
    capstone = compat_batch(payloads, n)
    masked = compat_batch(payloads, n, mask_padding=True)
    np.testing.assert_array_equal(capstone.head_bytes, masked.head_bytes)
    assert capstone.head_lengths[:, 0].tolist() == [n] * len(payloads)
    assert masked.head_lengths[:, 0].tolist() == [min(len(p), n) for p in payloads]
    assert capstone.head_lengths[:, 1].tolist() == masked.head_lengths[:, 1].tolist() == [0] * len(
        payloads)


@given(st.binary(min_size=1, max_size=64), st.sampled_from(["", " ", "\n", "\r\n"]))
def test_parse_hex_line_round_trips(payload, ending):
    assert parse_hex_line(payload.hex() + ending, "f:1") == payload


@pytest.mark.parametrize(
    ("line", "reason"),
    [("1603010", "odd number of hex digits"), ("16030g", "'g' is not a hex digit"),
     ("", "empty line"), ("   \n", "empty line"), ("16 03", "' ' is not a hex digit")],
)
def test_bad_hex_lines_raise_naming_file_and_line(line, reason):
    with pytest.raises(HexLineError, match=f"^tls.txt:7: {reason}"):
        parse_hex_line(line, "tls.txt:7")


def test_read_hex_folder_keeps_good_lines_and_reports_bad_ones(tmp_path: Path):
    (tmp_path / "443").write_text("160301\n1603010\n\n16030g\n1703030010\n")
    (tmp_path / "ssh").write_text("5353482d322e30\n")
    (tmp_path / "subdir").mkdir()
    folder = read_hex_folder(tmp_path)
    assert folder.payloads == {"443": [bytes.fromhex("160301"), bytes.fromhex("1703030010")],
                               "ssh": [b"SSH-2.0"]}
    assert len(folder.errors) == 3
    for line_number, error in zip((2, 3, 4), folder.errors, strict=True):
        assert error.startswith(f"{tmp_path / '443'}:{line_number}: ")
    assert list(folder.rows())[-1] == ("ssh", b"SSH-2.0")


def test_head_batch_select_and_len():
    batch = pack_heads([b"ab", b"cd", b"ef"], [b"", b"x", b""], 8)
    picked = batch.select(np.array([False, True, True]))
    assert isinstance(picked, HeadBatch) and len(picked) == 2 and picked.n == 8
    assert picked.head_bytes[:, 0].tolist() == [ord("c"), ord("e")]
