"""Labelled datasets: provenance, splits by capture group, classes."""

from __future__ import annotations

import numpy as np

from headbits.trainer import dataset
from headbits.trainer.dataset import OTHER


def test_group_fold_keeps_each_group_in_one_fold_and_is_reproducible():
    groups = [f"file{i % 17}.pcap" for i in range(500)]
    folds = dataset.group_fold(groups, 3, seed=7)
    for group in set(groups):
        assert len(set(folds[[g == group for g in groups]])) == 1
    assert np.array_equal(folds, dataset.group_fold(groups, 3, seed=7))
    assert set(folds) == {0, 1, 2}
    assert not np.array_equal(folds, dataset.group_fold(groups, 3, seed=8))


def test_every_fold_gets_a_group_where_there_are_enough_and_many_keep_their_hash_fold():
    for hour in range(200):  # a window's groups are sensor@hour: the hour changes the hash
        groups = [f"sensor-{i % 6}@{hour}" for i in range(60)]
        assert set(dataset.group_fold(groups, 3, seed=1)) == {0, 1, 2}, hour
    assert set(dataset.group_fold(["a", "b"], 3, seed=1)) <= {0, 1, 2}
    many = [f"file{i}.pcap" for i in range(300)]
    by_hash = dataset.group_fold(many, 3, seed=7)
    # With every fold filled by the hash, adding a group moves no other group.
    assert np.array_equal(dataset.group_fold([*many, "new.pcap"], 3, seed=7)[:-1], by_hash)


def test_hex_folder_labels_by_file_name_and_reports_bad_lines(tmp_path):
    (tmp_path / "TLS").write_text("160301020001\n16030300\nzz00\n")
    (tmp_path / "443").write_text("1603\nabc\n\n")
    data = dataset.from_hex_folder(tmp_path)
    assert sorted(zip(data.labels, data.label_sources, strict=True)) == [
        ("tls", "folder"), ("tls", "folder"), ("tls", "port")]
    assert [h.orig_head for h in data.heads if h.resp_p == 443] == [b"\x16\x03"]
    assert len(data.errors) == 3
    assert any("TLS:3" in e and "'z'" in e for e in data.errors)
    assert any("443:2" in e and "odd number" in e for e in data.errors)
    assert any("443:3" in e and "empty" in e for e in data.errors)


def test_rare_protocols_fall_into_other_and_unknown_is_never_a_class():
    labels = ["tls"] * 30 + ["http"] * 25 + ["ssh"] * 3 + ["unknown"] * 40
    classes = dataset.choose_classes(labels, min_rows=20)
    assert classes == ("tls", "http", OTHER)
    indices = dataset.class_indices(["http", "ssh", "tls", "unknown"], classes)
    assert indices.tolist() == [1, 2, 0, 2]
