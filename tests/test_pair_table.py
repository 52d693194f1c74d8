"""The evaluation's AUROC table: gap-free flows make the figures, all flows are kept apart."""

from __future__ import annotations

import numpy as np

from headbits.common.records import PayloadHead
from headbits.trainer.dataset import LabelledHeads
from headbits.trainer.evaluate import ALL_OTHERS, HeldOutScores, pair_table


def head(row: int, gap: bool) -> PayloadHead:
    return PayloadHead(f"P{row}", 1.7e9, "s", "10.0.0.1", 1024, "10.0.0.2", 443, "tcp", (),
                       b"\x16\x03", b"", 2, 0, gap, False)


def held_out(data: LabelledHeads, errors: list[float]) -> HeldOutScores:
    """Held-out scores whose every prediction is right and whose alert margin is the error."""
    errors = np.array(errors, dtype=np.float32)
    labels = data.label_array()
    return HeldOutScores(data, errors, labels, labels, np.zeros(len(data)),
                         alert_margin=errors.astype(np.float64))


def test_midstream_flows_are_left_out_of_the_figures_and_counted_apart():
    data = LabelledHeads()
    errors = []
    for row in range(40):  # gap-free: tls scores low, http and dns high: perfectly separated
        label = ("tls", "http", "dns", "tls")[row % 4]
        data.add(head(row, gap=False), label, "zeek", f"file{row % 8}.pcap")
        errors.append(0.1 if label == "tls" else 1.0)
    for row in range(40, 60):  # mid-stream tls flows score as high as anything else
        data.add(head(row, gap=True), "tls", "zeek", f"mid{row % 4}.pcap")
        errors.append(2.0)
    scores = held_out(data, errors)
    pairs = {pair["protocol"]: pair for pair in pair_table(scores, "tls", 20, 0)}
    assert set(pairs) == {"http", "dns", ALL_OTHERS}
    for protocol, rows in (("http", 10), ("dns", 10), (ALL_OTHERS, 20)):
        assert pairs[protocol]["rows"] == rows
        assert pairs[protocol]["rows_all_flows"] == rows
        assert pairs[protocol]["auroc"] == 1.0
        assert pairs[protocol]["alert_auroc"] == 1.0
        # With the 20 mid-stream tls flows counted, every one of them outranks the others.
        assert pairs[protocol]["auroc_all_flows"] == 20 / 40


def test_parser_labelled_figures_leave_out_flows_only_tshark_named():
    """A STARTTLS connection that tshark names `tls` opens with SMTP bytes: the autoencoder
    rightly scores it high, which costs the all-labels AUROC and not the parser-labelled one."""
    data = LabelledHeads()
    errors = []
    for row in range(40):
        label = ("tls", "smtp")[row % 2]
        data.add(head(row, gap=False), label, "ndpi", f"file{row % 8}.pcap")
        errors.append(0.1 if label == "tls" else 1.0)
    for row in range(40, 50):  # tshark's `tls`, scored above every smtp flow
        data.add(head(row, gap=False), "tls", "tshark", f"starttls{row % 5}.pcap")
        errors.append(2.0)
    scores = held_out(data, errors)
    smtp = {pair["protocol"]: pair for pair in pair_table(scores, "tls", 20, 0)}["smtp"]
    # 20 smtp flows outrank the 20 ndpi tls flows and none of the 10 tshark ones.
    assert smtp["auroc"] == 20 * 20 / (20 * 30)
    assert smtp["rows_parser_labels"] == 20
    assert smtp["auroc_parser_labels"] == 1.0
    assert smtp["auroc_parser_labels_low"] == smtp["auroc_parser_labels_high"] == 1.0
    assert smtp["auroc_low"] < 1.0
