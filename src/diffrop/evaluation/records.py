"""Where an evaluation's results live, so that no evaluation ever replaces another one's scores.

Each evaluation writes its own record, ``<eval dir>/<checkpoint step>-<settings hash>/`` (``results.json``,
``per_class.png``), keyed by the step of the checkpoint it scored and every setting that shapes its numbers (the
eval settings, the sampler, the data overrides, the checkpoint file). ``<eval dir>/latest.json`` names the newest
record; readers go through ``results_path``, which also reads the single ``<eval dir>/results.json`` that
evaluations wrote before records existed. The same settings at the same step are the same record: ``src/eval.py``
reuses it rather than scoring again (``eval.overwrite=true`` scores again into it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffrop.runtime.atomic_write import atomic_write

LATEST = "latest.json"
RESULTS = "results.json"
# eval settings that change how an evaluation runs or reports, never its numbers: hashed at these values whatever
# they are, so `eval.overwrite=true` rescores the record of the same settings (and records keep their names)
UNKEYED_EVAL = {"progress": True, "overwrite": False}


def keyed_eval(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The eval settings as they key a record: ``UNKEYED_EVAL``'s at their fixed values."""
    return {**settings, **UNKEYED_EVAL}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """8 hex digits of the settings (JSON, keys sorted): equal settings, equal hash, whatever their order."""
    return hashlib.sha1(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:8]


def record_dir(eval_dir: Path, step: int | None, settings: Mapping[str, Any]) -> Path:
    """``<eval dir>/<step>-<settings hash>``; ``unknown`` for a checkpoint that stored no step."""
    return Path(eval_dir) / f"{'unknown' if step is None else step}-{settings_hash(settings)}"


def results_path(eval_dir: Path) -> Path:
    """The newest record's results.json (``latest.json``), else the old single-file layout's (may not exist)."""
    eval_dir = Path(eval_dir)
    try:
        name = json.loads((eval_dir / LATEST).read_text())["record"]
    except (OSError, ValueError, KeyError, TypeError):
        return eval_dir / RESULTS
    return eval_dir / name / RESULTS


def write_results(record: Path, results: Mapping[str, Any]) -> Path:
    """``<record>/results.json``, atomically, then ``latest.json`` pointing at it; returns the results path."""
    record.mkdir(parents=True, exist_ok=True)
    with atomic_write(record / RESULTS, "w") as f:
        f.write(json.dumps(results, indent=2))
    mark_latest(record)
    return record / RESULTS


def mark_latest(record: Path) -> None:
    with atomic_write(record.parent / LATEST, "w") as f:
        f.write(json.dumps({"record": record.name, "results": f"{record.name}/{RESULTS}"}, indent=1))


def copy_latest(src_eval_dir: Path, dst_eval_dir: Path) -> Path:
    """Copy ``src``'s newest record (or its old single results.json) into ``dst`` as ``dst``'s newest record."""
    src = results_path(src_eval_dir)
    record = Path(dst_eval_dir) / (src.parent.name if src.parent != Path(src_eval_dir) else "copied")
    return write_results(record, json.loads(src.read_text()))
