"""Heads files as a collector source: Avro container files of PayloadHeads.

`headbits generate` and the offline tools write heads files; replaying one through the collector
feeds the pipeline exactly what a sensor would have published. A file that cannot be read past
some record yields the records before it and one `Rejected` item saying where it broke.
"""

from __future__ import annotations

from pathlib import Path

from headbits.collector.sources.base import Rejected, SourceItem
from headbits.collector.sources.replay import ReplaySource
from headbits.common.avro import read_heads_file
from headbits.common.records import InvalidRecord


class HeadsFileSource(ReplaySource):
    """Heads of Avro heads files in file order, paced like a capture replay."""

    def _load(self, path: Path) -> list[SourceItem]:
        items: list[SourceItem] = []
        try:
            items.extend(read_heads_file(path))
        except (OSError, ValueError, EOFError, InvalidRecord) as error:
            items.append(Rejected(b"", f"{path}: unreadable after record {len(items)}: {error}",
                                  str(path)))
        return items
