"""The CPU studies' framework (experiments/pcl_study.py, overlap_bench.py, ddp_streams.py): a study declares its
arms and how one arm is run and scored for one seed (``Study``); ``main`` does the rest: the flags, arm and seed
selection, parallel jobs (spawned processes, threads, or this process), the outputs <out>.json / .md (keeping its
Reading, diffrop.paper.reading) / .png, and ``--render-only``. Beside it what the studies' summaries and tables share:
per arm and metric the mean and sd over seeds and the differences to other arms paired by seed
(``diffrop.paper.paired``), the markdown cells that show them, the training diagnostics read from a run's
metrics.csv, and the error bars of a paired-difference plot. Each script keeps its arms, scores and prose."""

from __future__ import annotations

import csv
import fnmatch
import json
import multiprocessing
import os
import statistics
import sys
import time
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from diffrop.paper.paired import paired_difference
from diffrop.paper.reading import write_keeping_reading
from diffrop.runtime.children import Children

REPO = Path(__file__).resolve().parents[3]

# summary name: metrics.csv column (the training diagnostics both studies report)
TRAIN_COLUMNS = {
    "grad_ratio": "train/pcl/grad_ratio",
    "eps_slope": "train/eps_slope",
    "d_between": "train/pcl/d_between",
    "d_within": "train/pcl/d_within",
}


# --- statistics --------------------------------------------------------------------------------------------------
def spread(per_seed: Mapping) -> dict:
    """Mean and sample sd (n - 1; 0 for one seed) of one arm's metric, with its per-seed values as given."""
    v = list(per_seed.values())
    return {
        "mean": float(np.mean(v)),
        "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
        "per_seed": per_seed,
    }


def difference(arm: Mapping[int, float], base: Mapping[int, float], welch: bool = False) -> dict | None:
    """mean(arm - base) with its 95% interval, paired by seed where the two share >= 2 seeds; None otherwise.

    ``welch``: where they share fewer than 2 seeds, Welch's unpaired interval instead (``seeds`` empty), and every
    result names its ``test`` ("paired" | "welch"); still None with fewer than 2 values on a side.
    """
    paired = paired_difference(arm, base)
    if paired is not None:
        return {**paired.as_dict(), "test": "paired"} if welch else paired.as_dict()
    a, b = list(arm.values()), list(base.values())
    if not welch or len(a) < 2 or len(b) < 2:
        return None
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return {"mean": float(np.mean(a) - np.mean(b)), "low": float(ci.low), "high": float(ci.high), "seeds": [],
            "test": "welch"}  # fmt: skip


def column(by_seed: Mapping[int, float], against: Mapping[str, Mapping[int, float] | None], welch: bool = False,
           seed_key: Callable = str) -> dict:  # fmt: skip
    """One arm's metric: its ``spread`` (per-seed values keyed by ``seed_key(seed)``, in seed order) and, per
    ``vs_<name>`` in ``against``, its ``difference`` to that arm's values (None where ``against`` gives None)."""
    col = spread({seed_key(s): v for s, v in sorted(by_seed.items())})
    for name, base in against.items():
        col[name] = None if base is None else difference(by_seed, base, welch)
    return col


def train_medians(metrics_csv: Path, columns: Mapping[str, str] = TRAIN_COLUMNS) -> dict[str, float]:
    """Medians over the second half of training of the logged diagnostics (absent ones left out).

    The PCL diagnostics (``train/pcl/*``) leave out logged steps without pairs: a batch with no two conditioned
    samples to compare (every label dropped for classifier-free guidance) logs d_between = d_within = 0, and its
    PCL term and grad ratio are 0 by construction, not readings.
    """
    if not metrics_csv.is_file():  # a run shorter than one logging interval
        return {}
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))

    def no_pairs(row: dict) -> bool:
        distances = (row.get("train/pcl/d_between"), row.get("train/pcl/d_within"))
        return all(float(d or 0) == 0 for d in distances)

    out = {}
    for key, column in columns.items():
        pcl = column.startswith("train/pcl/")
        values = [float(r[column]) for r in rows if r.get(column) and not (pcl and no_pairs(r))]
        if values:
            out[key] = statistics.median(values[len(values) // 2 :])
    return out


# --- markdown ----------------------------------------------------------------------------------------------------
def mark(diff: Mapping, lower: bool) -> str:
    """ "**" for an interval that excludes 0 on the better side, "_" on the worse side, "" otherwise."""
    if not (diff["low"] > 0 or diff["high"] < 0):
        return ""
    return "**" if (diff["mean"] < 0) == lower else "_"


def signed(diff: Mapping, lower: bool, digits: int = 2, scale: float = 1.0) -> str:
    """The difference's mean, marked (``mark``), then † where it is Welch's unpaired interval: ``**-0.17**``."""
    m, welch = mark(diff, lower), "†" if diff.get("test") == "welch" else ""
    return f"{m}{scale * diff['mean']:+.{digits}f}{m}{welch}"


def interval_cell(diff: Mapping | None, lower: bool, digits: int = 2, scale: float = 1.0) -> str:
    """``+0.0123 [+0.0050, +0.0196]``, marked as ``signed`` († after the interval); "–" without a difference."""
    if diff is None:
        return "–"
    m, welch = mark(diff, lower), "†" if diff.get("test") == "welch" else ""
    lo, hi = scale * diff["low"], scale * diff["high"]
    return f"{m}{scale * diff['mean']:+.{digits}f}{m} [{lo:+.{digits}f}, {hi:+.{digits}f}]{welch}"


def value_cell(col: Mapping, lower: bool, digits: int = 2, scale: float = 1.0, interval: bool = False) -> str:
    """``mean ± sd`` of a ``spread`` with its ``vs_ddpm`` difference: `` (+0.12)`` (``signed``), or with
    ``interval`` the whole ``interval_cell`` on a second line (``<br>``)."""
    text = f"{scale * col['mean']:.{digits}f} ± {scale * col['sd']:.{digits}f}"
    diff = col["vs_ddpm"]
    if diff is None:
        return text
    if interval:
        return f"{text}<br>{interval_cell(diff, lower, digits, scale)}"
    return f"{text} ({signed(diff, lower, digits, scale)})"


def header(name: str, lower: bool) -> str:
    """A column header with the better direction: ``FID few ↓``."""
    return f"{name} {'↓' if lower else '↑'}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]] = ()) -> list[str]:
    """A markdown table's lines: the header, the rule and one line per row."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


# --- plots -------------------------------------------------------------------------------------------------------
def error_bars(diffs: Sequence[Mapping], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(means, 2 x n distances to the interval's ends) of paired differences: ``errorbar``'s centre and ``xerr`` /
    ``yerr``."""
    mean = scale * np.array([d["mean"] for d in diffs], dtype=float)
    low = scale * np.array([d["low"] for d in diffs], dtype=float)
    high = scale * np.array([d["high"] for d in diffs], dtype=float)
    return mean, np.stack([mean - low, high - mean])


def cached(path: Path, key: Mapping, compute: Callable[[], dict]) -> dict:
    """A run's result cached as JSON: the one stored in ``path`` where its "key" is ``key``, else ``compute()``'s,
    stored with ``key`` first."""
    key = json.loads(json.dumps(key))  # as stored: tuples as lists
    if path.is_file() and (stored := json.loads(path.read_text())).get("key") == key:
        return stored
    result = {"key": key, **compute()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# --- the framework -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One arm: ``slug`` names its runs' folder and its JSON key, ``label`` its table row, ``family`` its group
    (a plot's line, a recipe); ``overrides`` make it; ``seeds``: the default run's (``--seeds`` chooses others)."""

    slug: str
    label: str
    family: str
    overrides: tuple[str, ...] = ()
    tau0: float | None = None
    seeds: tuple[int, ...] = (0, 1, 2)


def _no_facts(args: Namespace, arms: list[Arm]) -> tuple[dict, dict]:
    return {}, {}


def _no_extra(results: dict, args: Namespace, context: dict) -> dict:
    return {}


@dataclass(frozen=True)
class Study:
    """A study declared: its arms, and what is particular to it. ``run(arm, seed, args, context) -> result`` trains
    (unless its cache holds the run) and scores one arm for one seed: a module-level function, so that spawned
    processes can run it; a ``wall_s`` in the result is summed in the meta. ``summarise(results, args)`` turns
    slug -> seed -> result into the JSON's "arms"; ``render(body, args)`` the JSON body ({"meta", "arms", ...})
    into the tables of <out>.md; ``plot(arms, path)`` draws <out>.png. ``prepare(args, arms) -> (facts, context)``
    runs first: ``facts`` go into the meta, ``context`` to every run; ``extra(results, args, context)`` adds items
    to the JSON body."""

    name: str  # logs/<name>/ and experiments/results/<name>.*
    doc: str
    arms: Sequence[Arm]
    run: Callable[[Arm, int, Namespace, dict], dict]
    summarise: Callable[[dict, Namespace], dict]
    render: Callable[[dict, Namespace], str]
    plot: Callable[[dict, Path], None] | None = None
    done: Callable[[Arm, int, Namespace], bool] | None = None  # whether run reuses a cached result
    prepare: Callable[[Namespace, list[Arm]], tuple[dict, dict]] = _no_facts
    extra: Callable[[dict, Namespace, dict], dict] = _no_extra
    options: Callable[[ArgumentParser], None] | None = None  # the study's own flags
    progress: Callable[[dict, Namespace], str] | None = None  # one run's progress line
    default_arms: tuple[str, ...] = ("*",)
    base: str | None = None  # always run: every difference is to it
    jobs: int = 1
    threads: bool = False  # parallel runs in threads (each run trains in a subprocess), not spawned processes
    cap_seeds: bool = False  # --seeds picks among an arm's own seeds (otherwise it replaces them)
    stored_flags: tuple[str, ...] = ("steps", "jobs")  # --render-only takes them from the stored meta
    write_each: bool = False  # <out>.json / .md after every result, not only at the end


class InProcess:
    """``--jobs 1``: the runs one after another in this process (a script loaded by path cannot be spawned)."""

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def workers(jobs: int, threads: bool) -> ProcessPoolExecutor | ThreadPoolExecutor | InProcess:
    """``jobs`` threads, or fresh processes (spawned: no OpenMP state forked from this one), or this process for 1."""
    if jobs == 1:
        return InProcess()
    if threads:
        return ThreadPoolExecutor(jobs)
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))


def train_script(run: Path, overrides: Sequence[str], threads: int, children: Children) -> None:
    """``src/train.py <overrides> hydra.run.dir=<run>`` of this checkout in a child process (``children``), with
    ``threads`` OpenMP threads; its output in <run>.log. Raises where it fails."""
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "src" / "train.py"), *overrides, f"hydra.run.dir={run}"]
    # this checkout's diffrop, whatever the venv has installed
    path = os.pathsep.join([str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    rc = children.run(
        cmd, run.with_suffix(".log"), dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)
    )
    if rc:
        raise RuntimeError(f"training {run} failed (exit {rc}); see {run.with_suffix('.log')}")


def show(study: Study, body: dict, args: Namespace, png: bool = True) -> None:
    """<out>.md (its Reading kept) and <out>.png from a JSON body."""
    write_keeping_reading(args.out.with_suffix(".md"), study.render(body, args))
    if png and study.plot is not None:
        study.plot(body["arms"], args.out.with_suffix(".png"))


def main(study: Study, argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=study.doc.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", help="for every arm (default: each arm's own)")
    p.add_argument(
        "--arms", nargs="+", default=list(study.default_arms), help="slugs or globs ('*': every arm)"
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=study.jobs, help="runs in parallel, one thread each")
    p.add_argument("--runs", type=Path, default=Path("logs") / study.name)
    p.add_argument("--out", type=Path, default=Path("experiments/results") / study.name)
    p.add_argument("--render-only", action="store_true",
                   help="<out>.md (keeping its Reading) and <out>.png again from <out>.json: no training or scoring")  # fmt: skip
    if study.options is not None:
        study.options(p)
    args = p.parse_args(argv)
    if args.render_only:
        body = json.loads(args.out.with_suffix(".json").read_text())
        for flag in study.stored_flags:
            setattr(args, flag, body["meta"].get(flag, getattr(args, flag)))
        return show(study, body, args)
    arms = [a for a in study.arms if any(fnmatch.fnmatch(a.slug, pat) for pat in args.arms)]
    if not arms:
        p.error(f"no arm matches {args.arms}; arms: {' '.join(a.slug for a in study.arms)}")
    if study.base and study.base not in [a.slug for a in arms]:
        arms.insert(0, next(a for a in study.arms if a.slug == study.base))
    start = time.monotonic()
    facts, context = study.prepare(args, arms)
    tasks = sorted(
        ((a, s) for a in arms for s in (args.seeds or a.seeds) if s in a.seeds or not study.cap_seeds),
        key=lambda task: task[1],
    )  # fmt: skip  (seed-major: early results are paired)
    trained = sum(not study.done(a, s, args) for a, s in tasks) if study.done else len(tasks)
    print(f"{len(tasks)} runs ({trained} without a result yet), {args.jobs} in parallel", flush=True)
    results: dict[str, dict[int, dict]] = {}
    with workers(args.jobs, study.threads) as pool:
        futures = {pool.submit(study.run, a, s, args, context): (a, s) for a, s in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            arm, seed = futures[future]
            result = results.setdefault(arm.slug, {})[seed] = future.result()
            print(f"[{done}/{len(tasks)}] {arm.slug} seed {seed}: {study.progress(result, args) if study.progress else 'done'} "
                  f"({(time.monotonic() - start) / 60:.1f} min)", flush=True)  # fmt: skip
            if study.write_each or done == len(tasks):
                times = [r["wall_s"] for runs in results.values() for r in runs.values() if "wall_s" in r]
                meta = facts | {"seeds": sorted({s for runs in results.values() for s in runs}), "steps": args.steps,
                                "jobs": args.jobs, "wall_s": time.monotonic() - start, "trained": trained}  # fmt: skip
                if times:
                    meta |= {"runs_s": sum(times), "run_s_median": statistics.median(times)}
                body = {
                    "meta": meta,
                    **study.extra(results, args, context),
                    "arms": study.summarise(results, args),
                }
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".json").write_text(json.dumps(body, indent=1))
                show(study, body, args, png=done == len(tasks))
    print(args.out.with_suffix(".md").read_text())
