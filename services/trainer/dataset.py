"""Labelled heads: what training and evaluation consume, from every source we can read.

Every row carries its label's provenance (a parser that confirmed the protocol is worth more than
a port guess) and a *group*: the capture file it came from. Flows of one capture are
near-duplicates, so splits are made by group, never by row; evaluations bootstrap over groups.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headbits.common.protocols import UNKNOWN, canonical_protocol, expected_protocol
from headbits.common.records import PayloadHead
from headbits.featurizer.bits import HeadBatch, pack_heads
from headbits.featurizer.compat import read_hex_folder

OTHER = "other"
"""The class of every protocol too rare in the training data to be a class of its own."""

GENERATED_GROUP_SIZE = 10
"""Generated sessions are independent; grouping them keeps group counts comparable to files."""


@dataclass
class LabelledHeads:
    """Row-aligned heads, labels, label sources and groups."""

    heads: list[PayloadHead] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    label_sources: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.heads)

    def add(self, head: PayloadHead, label: str, source: str, group: str) -> None:
        self.heads.append(head)
        self.labels.append(label)
        self.label_sources.append(source)
        self.groups.append(group)

    def extend(self, other: LabelledHeads) -> LabelledHeads:
        self.heads += other.heads
        self.labels += other.labels
        self.label_sources += other.label_sources
        self.groups += other.groups
        self.errors += other.errors
        return self

    def subset(self, rows: Iterable[int]) -> LabelledHeads:
        rows = list(rows)
        return LabelledHeads(
            [self.heads[i] for i in rows],
            [self.labels[i] for i in rows],
            [self.label_sources[i] for i in rows],
            [self.groups[i] for i in rows],
        )

    def where(self, keep: np.ndarray) -> LabelledHeads:
        return self.subset(np.flatnonzero(keep))

    def batch(self, n: int) -> HeadBatch:
        return pack_heads([h.orig_head for h in self.heads], [h.resp_head for h in self.heads], n)

    def label_array(self) -> np.ndarray:
        return np.array(self.labels, dtype=object)

    def counts(self) -> Counter:
        return Counter(self.labels)


def from_heads(heads: Iterable[PayloadHead], group_prefix: str) -> LabelledHeads:
    """Heads whose `services` carry the truth (generated traffic, Zeek-labelled heads files)."""
    data = LabelledHeads()
    for index, head in enumerate(heads):
        expectation = expected_protocol(head.services, head.transport, head.resp_p)
        source = "generated" if head.sensor == "generated" else expectation.source
        data.add(head, expectation.protocol, source,
                 f"{group_prefix}/{index // GENERATED_GROUP_SIZE}")
    return data


def from_hex_folder(folder: Path) -> LabelledHeads:
    """The capstone's training folder: one file per protocol name or port, one hex line per flow.

    A file named by a port number is labelled by the port map (source "port"); any other name is
    taken as the protocol (source "folder"). Only the originator's bytes exist in this format.
    """
    hex_folder = read_hex_folder(folder)
    data = LabelledHeads(errors=list(hex_folder.errors))
    for index, (name, payload) in enumerate(hex_folder.rows()):
        if name.isdigit():
            label, source = expected_protocol((), "tcp", int(name)).protocol, "port"
            port = int(name)
        else:
            label, source, port = canonical_protocol(name), "folder", 0
        head = PayloadHead(
            uid=f"H{hashlib.sha1(f'{name}:{index}'.encode()).hexdigest()[:17]}",
            ts=0.0, sensor="hex-folder", orig_h="0.0.0.0", orig_p=0, resp_h="0.0.0.0",
            resp_p=port, transport="tcp", services=(), orig_head=payload[:64], resp_head=b"",
            orig_bytes_seen=len(payload), resp_bytes_seen=0, orig_gap=False, resp_gap=False,
        )
        data.add(head, label, source, f"{name}/{index // GENERATED_GROUP_SIZE}")
    return data


def from_captures(
    captures: Sequence[Path], root: Path | None = None, dataset_labels_tsv: Path | None = None,
    progress: bool = True,
) -> LabelledHeads:
    """Reassembled heads of captures, labelled by the best source available per flow.

    Order of trust: the corpus's LABELS.tsv (a parser-confirmed oracle where it has one), a
    Zeek conn.log beside the capture (`<stem>.conn.log`), then the port map.
    """
    from tqdm import tqdm

    from headbits.collector.labels import label_from_conn_log_beside, read_dataset_labels
    from headbits.collector.pcap import read_capture

    corpus = read_dataset_labels(dataset_labels_tsv) if dataset_labels_tsv else None
    data = LabelledHeads()
    for path in tqdm(captures, desc="reading captures", unit="file", disable=not progress):
        group = str(path.relative_to(root)) if root else path.name
        result = read_capture(path, n=64)
        data.errors += result.errors
        for head in label_from_conn_log_beside(path, result.heads):
            found = corpus.label_for(group, head) if corpus else None
            if found is not None:
                label, source = found
            else:
                expectation = expected_protocol(head.services, head.transport, head.resp_p)
                label, source = expectation.protocol, expectation.source
            data.add(head, label, source, group)
    return data


def corpus_captures(corpus: Path) -> list[Path]:
    """Every capture listed in the corpus's MANIFEST.tsv, in manifest order."""
    with (corpus / "MANIFEST.tsv").open(newline="") as manifest:
        return [corpus / row["file"] for row in csv.DictReader(manifest, delimiter="\t")]


def from_corpus(corpus: Path, progress: bool = True, limit: int | None = None) -> LabelledHeads:
    captures = corpus_captures(corpus)[:limit]
    return from_captures(captures, root=corpus, dataset_labels_tsv=corpus / "LABELS.tsv",
                         progress=progress)


def group_fold(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """int [rows]: a fold number per row, the same for every row of a group.

    A group's fold is the hash of its name, so it keeps its fold as other groups come and go.
    With few groups the hash can leave a fold empty (6 groups in 3 folds: fold 0, the
    validation fold, 1 time in 11), and a training window of a few sensors over one hour
    would then have no validation rows, by the hour's luck: where there are at least `folds`
    groups and a fold is empty, the groups are dealt to the folds in hash order instead, so
    every fold gets one.
    """
    def digest(group: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big")

    names = sorted(set(groups))
    fold_of = {group: digest(group) % folds for group in names}
    if len(names) >= folds and len(set(fold_of.values())) < folds:
        fold_of = {group: rank % folds
                   for rank, group in enumerate(sorted(names, key=digest))}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def choose_classes(labels: Sequence[str], min_rows: int) -> tuple[str, ...]:
    """Protocols with enough rows to learn, most frequent first, then OTHER for the rest."""
    frequent = [name for name, count in Counter(labels).most_common()
                if count >= min_rows and name not in (UNKNOWN, OTHER)]
    return (*frequent, OTHER)


def class_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """int32 [rows]: each label's class index, OTHER's index for labels that are not classes."""
    index = {name: i for i, name in enumerate(classes)}
    other = index[OTHER]
    return np.array([index.get(label, other) for label in labels], dtype=np.int32)
