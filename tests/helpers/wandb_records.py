"""Read an offline W&B run back from its ``run-<id>.wandb`` file, the way ``wandb sync`` would upload it.

wandb >= 0.2x dropped its Python reader (``wandb.sdk.internal.datastore``); the file is still LevelDB's log format
(32 KiB blocks of checksummed fragments) around wandb's own protobuf ``Record`` messages, which we decode with
wandb's generated classes. Test-only: it checks what a dashboard would show without an account or network.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK, _HEADER = 32768, 7
_FULL, _LAST = 1, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:  # zero-filled rest of a block
            pos += left
            continue
        pending += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _update(into: dict[str, Any], items) -> dict[str, Any]:
    """Apply wandb's (key or nested_key path, value_json) items; a media value arrives as several nested items."""
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = into
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = json.loads(item.value_json)
    return into


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # define_metric records by name
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)  # logged (e.g. a checkpoint)
    used_artifacts: list[pb.UseArtifactRecord] = field(default_factory=list)  # inputs (lineage)


def finished_records(wandb_file: Path, timeout_s: float = 60.0, still_s: float = 2.0) -> list[pb.Record]:
    """The file's records once its writer is done: wandb-core (a process of its own) may still be writing after
    ``run.finish()`` returned, on a loaded machine for seconds. Done = an ``exit`` record, or (a killed run) the file
    unchanged for ``still_s``."""
    deadline, size, since = time.monotonic() + timeout_s, -1, time.monotonic()
    while True:
        found = list(records(wandb_file))
        now = time.monotonic()
        if any(r.WhichOneof("record_type") == "exit" for r in found) or now > deadline:
            return found
        if (new := Path(wandb_file).stat().st_size) != size:
            size, since = new, now
        elif now - since >= still_s:
            return found
        time.sleep(0.2)


def read_run(wandb_file: Path) -> OfflineRun:
    run = OfflineRun()
    for r in finished_records(wandb_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.group = r.run.run_id, r.run.display_name, r.run.run_group
            run.job_type, run.tags = r.run.job_type, list(r.run.tags)
            _update(run.config, r.run.config.update)
        elif kind == "config":
            _update(run.config, r.config.update)
        elif kind == "history":
            run.history.append(_update({}, r.history.item))
        elif kind == "summary":
            _update(run.summary, r.summary.update)
        elif kind == "metric":
            run.metrics[r.metric.name or r.metric.glob_name] = r.metric
        elif kind == "artifact":
            run.artifacts.append(r.artifact)
        elif kind == "use_artifact":
            run.used_artifacts.append(r.use_artifact)
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    """The ``run-<id>.wandb`` files under ``<run_dir>/wandb``, oldest first (a resumed run adds one per start)."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
