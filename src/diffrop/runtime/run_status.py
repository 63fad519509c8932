"""How a run directory ended or stands, in one format for every program: the FAILED file, whether a training run is
still going (for an evaluation of one of its checkpoints), and a run's stable id.

Every entry point (train, eval, classify, the reproduce driver) that fails writes ``<run dir>/FAILED``: its
first line is the error a table can show ("ValueError: ..."), then ``key: value`` lines (``job_id``,
``log``), then a blank line and the traceback. ``describe_failure`` reads it back (or a bare traceback),
so sweeps, the table renderer and the driver all show a failed cell the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import traceback
from collections.abc import Mapping
from pathlib import Path

import yaml

from diffrop.runtime.run_lock import held_by

FAILED = "FAILED"
_FAIL_FIELD = re.compile(
    r"^(?:(?:slurm[ _-]?)?job[ _-]?id|(log)(?:[ _-]?(?:path|file))?)\s*[:=]\s*(\S.*)$", re.I
)


def write_failed(
    run_dir: Path, headline: str, fields: Mapping[str, object] | None = None, with_traceback: bool = True
) -> Path:
    """Write ``<run_dir>/FAILED``: headline, ``key: value`` fields, then the current traceback (if any).

    Never raises OSError: a full disk must not hide the error being recorded.
    """
    path = Path(run_dir) / FAILED
    lines = [headline.strip() or "failed", *(f"{k}: {v}" for k, v in (fields or {}).items() if v is not None)]
    trace = traceback.format_exc() if with_traceback else ""
    text = "\n".join(lines) + "\n" + (f"\n{trace}" if trace and trace != "NoneType: None\n" else "")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def clear_failed(run_dir: Path) -> None:
    """A run that finished leaves no FAILED of an earlier attempt behind."""
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


def describe_failure(text: str) -> str:
    """One line from a FAILED file (``write_failed``'s format): the error, then job id and log path when the file
    names them. Lines "job_id: 123" / "log: path/to/log" are picked out; of a bare traceback only the last line
    is kept.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = {("log" if m[1] else "job"): m[2].strip() for m in map(_FAIL_FIELD.match, lines) if m}
    job, log = found.get("job"), found.get("log")
    rest = [line for line in lines if not _FAIL_FIELD.match(line)]
    if rest and rest[0].startswith("Traceback"):
        message = rest[-1]
    else:  # "ExcType: message" first (as train.py writes it), possibly followed by a traceback
        end = next((i for i, line in enumerate(rest) if line.startswith("Traceback")), len(rest))
        message = " ".join(rest[:end])
    message = message if len(message) <= 300 else message[:299] + "…"
    return "; ".join(
        [message or "no reason given", *([f"job {job}"] if job else []), *([f"log {log}"] if log else [])]
    )


def failure_reason(failed: Path, log: Path) -> str:
    """What a failed stage said: its FAILED file (``describe_failure``), else the last line of its log."""
    if failed.is_file() and (text := failed.read_text(errors="replace")).strip():
        return describe_failure(text)
    if log.is_file() and (
        lines := [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    ):
        return lines[-1]
    return "exited with an error and left no message"


def run_id(run_dir: str | Path) -> str:
    """A stable W&B id per run directory, so a resumed run continues the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def training_run(ckpt_path: str | Path) -> Path | None:
    """The training run a checkpoint path belongs to (``<run>/checkpoints/x.ckpt`` with ``<run>/.hydra``), or None."""
    path = Path(ckpt_path)
    run = path.parent.parent
    return run if path.parent.name == "checkpoints" and (run / ".hydra").is_dir() else None


def _stored_config(run: Path) -> dict:
    try:
        return yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def run_state(ckpt_path: str | Path, step: int | None, max_steps: int | None) -> dict[str, object]:
    """Where the run stood when its checkpoint of ``step`` was evaluated: ``state`` is ``finished`` (step reached
    ``max_steps``), ``training`` (a live process holds the run's ``.lock``) or ``stopped`` (neither), with
    ``holder`` naming the live process."""
    run = training_run(ckpt_path)
    holder = held_by(run) if run is not None else None
    done = step is not None and max_steps is not None and max_steps > 0 and step >= max_steps
    state = "finished" if done else "training" if holder else "stopped"
    return {"state": state, "max_steps": max_steps, "run_dir": str(run) if run else None, "holder": holder}


def missing_checkpoint(ckpt_path: str | Path) -> str:
    """Why ``ckpt_path`` does not exist, and what to do, for a user who passed it (it does not exist)."""
    path = Path(ckpt_path)
    run = training_run(path)
    if run is None:
        return (
            f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/last.ckpt of a trained run "
            "(python src/train.py prints it when it ends)"
        )
    cfg = _stored_config(run)
    every = ((cfg.get("callbacks") or {}).get("checkpoint") or {}).get("every_n_train_steps")
    max_steps = (cfg.get("trainer") or {}).get("max_steps")
    others = sorted(p.name for p in path.parent.glob("*.ckpt")) + sorted(
        p.name for p in run.glob("hpc_ckpt_*.ckpt")
    )
    holder = held_by(run)
    when = f"every {every:,} steps and " if isinstance(every, int) and every > 0 else ""
    end = f" (trainer.max_steps={max_steps:,})" if isinstance(max_steps, int) and max_steps > 0 else ""
    now = f"; it is training now ({holder})" if holder else ""
    there = f"; it holds {', '.join(others)}: pass one of those" if others else ""
    return (
        f"run {run} has no checkpoint {path.name} yet: training saves it {when}at its end{end}{now}{there}. "
        "Evaluate once the file exists"
    )
