"""A run directory's stored overrides are its identity: ``train.py hydra.run.dir=<run>`` alone resumes it.

Hydra writes ``<run>/.hydra/{config,hydra,overrides}.yaml`` before the task starts, so whatever the command line
composes replaces what a finished run stored. ``adopt_stored_run`` runs before Hydra: it puts the run's stored
overrides in front of the command line, refuses (one line, nothing written) a command whose overrides differ
from them, and ends a command that would only re-open a finished run before anything is touched.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

# How a run is continued, not what it is: these may differ from the stored overrides.
RESUME_KEYS = ("trainer.max_steps", "ckpt_path")
_RESUME_CKPT = ("auto", "last")
_HYDRA_FLAG_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                          "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}  # fmt: skip
_NO_TRAINING = {
    "--cfg",
    "-c",
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--resolve",
    "--shell-completion",
}


# Overrides a run stored before a setting was renamed or retired: renamed ones are read under today's name, retired
# ones are dropped (the run's sampler group now draws the grids and the periodic FID), so the run still resumes.
RENAMED_KEYS = {"callbacks.periodic_fid.cache_dir": "callbacks.periodic_fid.reference_cache"}
RETIRED_KEYS = ("callbacks.sample_grid.steps", "callbacks.sample_grid.guidance", "callbacks.periodic_fid.steps",
                "callbacks.periodic_fid.guidance", "callbacks.periodic_fid.batch_size")  # fmt: skip


class StoredRunMismatch(Exception):
    """The command line asks a stored run to be something else."""


def override_key(override: str) -> str:
    """``+a.b=1`` / ``++a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def upgrade_override(override: str) -> str | None:
    """``override`` in today's key names; None for a retired setting."""
    key = override_key(override)
    if key in RETIRED_KEYS:
        return None
    if key in RENAMED_KEYS:
        return override.replace(key, RENAMED_KEYS[key], 1)
    return override


def _value(override: str) -> str:
    return override.lstrip("+").split("=", 1)[1] if "=" in override else override


def _shown(override: str) -> str:
    return "removed" if override.startswith("~") else _value(override)


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values) and the overrides of a command line."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _HYDRA_FLAG_WITH_VALUE and i + 1 < len(argv) and "=" not in argv[i + 1]:
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def _stored_max_steps(run: Path) -> int | None:
    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    steps = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("max_steps")
    return steps if isinstance(steps, int) else None


def saved_step(run: Path) -> int | None:
    """The global step of the newest checkpoint train.py's ckpt_path=auto would resume from."""
    found = [p for p in (run / "checkpoints" / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    if not found:
        return None
    import torch

    newest = max(found, key=lambda p: p.stat().st_mtime)
    try:  # mmap: the step is read without reading the weights
        return int(torch.load(newest, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception:  # unreadable: train.py's own checks say why
        return None


def adopt_stored_run(argv: list[str]) -> tuple[list[str], str | None]:
    """``(argv to hand to Hydra, message)``; message is set when the run is finished and there is nothing to do.

    Raises ``StoredRunMismatch`` when the command line's overrides differ from the stored ones in any key but
    ``RESUME_KEYS``. A command line without ``hydra.run.dir=``, a multirun, or a directory without
    ``.hydra/overrides.yaml`` passes through unchanged.
    """
    flags, given = _split(argv)
    run_dirs = [_value(o) for o in given if override_key(o) == "hydra.run.dir"]
    if not run_dirs or {"-m", "--multirun"} & set(flags):
        return argv, None
    run = Path(run_dirs[-1])
    stored_file = run / ".hydra" / "overrides.yaml"
    if not stored_file.is_file():
        return argv, None
    stored = [
        o for o in (upgrade_override(str(o)) for o in yaml.safe_load(stored_file.read_text()) or []) if o
    ]
    stored_by_key = {override_key(o): o for o in stored}
    task = [o for o in given if not override_key(o).startswith("hydra.")]
    bad = []
    for o in {
        override_key(o): o for o in task
    }.values():  # a key given twice: the last one counts, as in Hydra
        key, was = override_key(o), stored_by_key.get(override_key(o))
        resumes = key == "trainer.max_steps" or (key == "ckpt_path" and _value(o) in _RESUME_CKPT)
        if not resumes and (was is None or _shown(was) != _shown(o)):
            bad.append(f"{key} (stored: {'unset' if was is None else _shown(was)}, given: {_shown(o)})")
    if bad:
        raise StoredRunMismatch(
            f"{run} is an existing run and the command line changes its stored overrides ({stored_file}): "
            f"{'; '.join(bad)}. Resume it with `python src/train.py hydra.run.dir={run}` alone (only "
            f"{' and '.join(RESUME_KEYS)} may be given), or pass another hydra.run.dir for new settings"
        )
    resume = {override_key(o): o for o in task if override_key(o) in RESUME_KEYS}
    merged = [resume.pop(override_key(o), o) for o in stored] + list(resume.values())
    hydra_overrides = [o for o in given if override_key(o).startswith("hydra.")]
    new_argv = [*flags, *merged, *hydra_overrides]
    if _NO_TRAINING & set(flags):
        return new_argv, None
    given_steps = next((_value(o) for o in merged if override_key(o) == "trainer.max_steps"), None)
    max_steps = int(given_steps) if given_steps is not None and given_steps.isdigit() else None
    max_steps = max_steps if given_steps is not None else _stored_max_steps(run)
    step = saved_step(run) if max_steps and max_steps > 0 else None
    if step is not None and step >= max_steps:
        return new_argv, (
            f"{run} is finished (step {step} of trainer.max_steps={max_steps}); nothing to do. To train it "
            f"further: python src/train.py hydra.run.dir={run} trainer.max_steps=<more>"
        )
    return new_argv, None


def resume_command(run: Path) -> str:
    """The command that resumes ``run``: its directory as the user would type it (relative to here when inside)."""
    shown = Path(os.path.relpath(run)) if not os.path.relpath(run).startswith("..") else run
    return f"python src/train.py hydra.run.dir={shlex.quote(str(shown))}"


def unfinished_twin(argv: list[str]) -> str | None:
    """A note naming the newest unfinished run stored with exactly ``argv``'s overrides, or None. Looked for where a
    command without ``hydra.run.dir`` puts its run (configs/hydra/default.yaml: ``<paths.log_dir>/train/runs``).

    A command without ``hydra.run.dir`` always starts a new timestamped run (it never guesses which old one to
    continue); when a run of the same overrides stopped before its end, the note says how to resume that one, so
    re-running the command a stopped run printed loses nothing.
    """
    flags, given = _split(argv)
    values = {override_key(o): _value(o) for o in given}
    runs_root = (
        Path(values.get("paths.log_dir", f"{values.get('paths.root_dir', '.')}/logs")) / "train" / "runs"
    )
    if {"-m", "--multirun"} & set(flags) or _NO_TRAINING & set(flags) or not runs_root.is_dir():
        return None
    if any(key.startswith("hydra.") or key == "task_name" for key in values):
        return None
    wanted = sorted(given)
    for stored_file in sorted(
        runs_root.glob("*/.hydra/overrides.yaml"), reverse=True
    ):  # newest timestamp first
        run = stored_file.parent.parent
        if sorted(str(o) for o in yaml.safe_load(stored_file.read_text()) or []) != wanted:
            continue
        step, max_steps = saved_step(run), _stored_max_steps(run)
        if step is not None and max_steps is not None and step < max_steps:
            return (
                f"note: {run} is an unfinished run of these overrides (step {step} of {max_steps}); this command "
                f"starts a new run. To resume that one instead: {resume_command(run)}"
            )
    return None
