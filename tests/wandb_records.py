"""Read back what an offline W&B run wrote: the records of its ``run-<id>.wandb`` file.

wandb 0.31 ships no reader for this file. It is a LevelDB-style log: a 7-byte header (``:W&B``,
a 2-byte magic, a version byte), then 32 KiB blocks of chunks, each a 7-byte header (CRC-32C,
little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; the chunks of one
record concatenate to a serialized ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_FILE_HEADER = 7
_CHUNK_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file, in the order written."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", _FILE_HEADER
    while pos + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # the block's tail is zero padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0:  # padding up to the next block
            pos += left_in_block
            continue
        pending += data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """An offline run as its records tell it."""

    folder: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    @classmethod
    def read(cls, folder: Path) -> OfflineRun:
        (path,) = Path(folder).glob("run-*.wandb")
        run = cls(folder=Path(folder))
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.name, run.group, run.job_type = (
                    record.run.display_name,
                    record.run.run_group,
                    record.run.job_type,
                )
                run.tags = list(record.run.tags)
                run._update(run.config, record.run.config.update)
            elif kind == "config":
                run._update(run.config, record.config.update)
            elif kind == "summary":
                run._update(run.summary, record.summary.update)
            elif kind == "history":
                run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run

    @staticmethod
    def _update(target: dict[str, Any], items: Any) -> None:
        for item in items:
            target[_key(item)] = json.loads(item.value_json)

    def logged(self, key: str) -> list[Any]:
        """Every value logged under ``key`` (a history key such as ``val/gIoU`` or ``val/panel/captions``)."""
        return [row[key] for row in self.history if key in row]
