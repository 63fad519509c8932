"""DiffROP Fig. 2 / Sec. 5.1: does a PCL form move the optimum of the diffusion loss on a 1-D two-class mixture?

Exact loss landscapes over the two class means (m1, m2) of the toy in ``diffrop.paper.toy`` (its docstring derives
every formula): the diffusion loss alone, and diffusion + PCL for each phi of ``diffrop.losses.pcl.PHI``.
Writes <out>/fig2_toy.png (heatmaps with the truth (0, 2) and each arg-min) and <out>/fig2_toy.json, and prints
the arg-min table. Runs in about a second:

    python experiments/fig2_toy.py
    python experiments/fig2_toy.py --tau-schedule exp_decay --temperature 0.1 --out /tmp/fig2
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import LogNorm

from diffrop.losses import tau as tau_schedules
from diffrop.losses.pcl import PHI
from diffrop.paper.toy import DISTANCES, Toy, argmin_2d, landscapes

SCHEDULES = {"constant": "Constant", "exp_decay": "ExpDecay", "linear": "Linear", "cosine": "Cosine"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("experiments/results"), help="output folder")
    p.add_argument("--s", type=float, default=0.5, help="class standard deviation (default 0.5)")
    p.add_argument(
        "--tau", type=float, default=30.0, help="tau0, the PCL weight (default 30, see diffrop.paper.toy)"
    )
    p.add_argument(
        "--tau-schedule", choices=SCHEDULES, default="constant", help="tau(t/T) (default constant)"
    )
    p.add_argument("--temperature", type=float, default=0.5, help="exp_decay temperature (default 0.5)")
    p.add_argument("--margin", type=float, default=1.0, help="hinge margin (default 1.0)")
    p.add_argument(
        "--distance", choices=DISTANCES, default="class_means", help="what d is (default class_means)"
    )
    p.add_argument(
        "--num-t", type=int, default=10, help="timesteps averaged over, midpoint rule (default 10)"
    )
    p.add_argument("--m1", type=float, nargs=2, default=(-0.5, 0.5), help="m1 grid range (default -0.5 0.5)")
    p.add_argument("--m2", type=float, nargs=2, default=(0.5, 3.5), help="m2 grid range (default 0.5 3.5)")
    p.add_argument("--step", type=float, default=0.01, help="grid resolution (default 0.01)")
    return p.parse_args(argv)


def make_tau(args: argparse.Namespace):
    cls = getattr(tau_schedules, SCHEDULES[args.tau_schedule])
    if args.tau_schedule == "exp_decay":
        return cls(tau0=args.tau, temperature=args.temperature)
    return cls(tau0=args.tau)


def grid(lo: float, hi: float, step: float) -> torch.Tensor:
    if not (step > 0 and hi > lo):
        raise ValueError(f"need a grid range lo < hi and a step > 0, got [{lo}, {hi}] step {step}")
    return lo + step * torch.arange(round((hi - lo) / step) + 1, dtype=torch.float64)


def summarise(losses: dict[str, torch.Tensor], m1: torch.Tensor, m2: torch.Tensor, truth) -> dict:
    rows = {}
    for name, loss in losses.items():
        a1, a2 = argmin_2d(loss, m1, m2)
        rows[name] = {
            "argmin": [round(a1, 6), round(a2, 6)],
            "distance_from_truth": round(math.hypot(a1 - truth[0], a2 - truth[1]), 6),
            "on_grid_edge": a1 in (float(m1[0]), float(m1[-1])) or a2 in (float(m2[0]), float(m2[-1])),
            "min_loss": float(loss.min()),
        }
    return rows


def plot(losses: dict[str, torch.Tensor], rows: dict, m1, m2, truth, title: str, path: Path) -> None:
    fig, axes = plt.subplots(
        1, len(losses), figsize=(3.3 * len(losses), 4.4), sharey=True, layout="constrained"
    )
    extent = (float(m1[0]), float(m1[-1]), float(m2[0]), float(m2[-1]))
    for ax, (name, loss) in zip(axes, losses.items(), strict=True):
        excess = (loss - loss.min()).T.numpy() + 1e-6  # [m2, m1] for imshow; log colour shows the basin
        im = ax.imshow(excess, origin="lower", extent=extent, aspect="auto", norm=LogNorm(1e-6, excess.max()))
        ax.contour(
            m1.numpy(), m2.numpy(), excess, levels=[1e-5, 1e-4, 1e-3, 1e-2], colors="w", linewidths=0.5
        )
        ax.plot(*truth, "P", ms=11, mfc="w", mec="k", label="truth (0, 2)")
        ax.plot(*rows[name]["argmin"], "X", ms=10, mfc="r", mec="k", label="arg-min")
        a = rows[name]["argmin"]
        label = "diffusion only" if name == "diffusion" else f"diffusion + {name}"
        ax.set_title(f"{label}\narg-min ({a[0]:.2f}, {a[1]:.2f})", fontsize=10)
        ax.set_xlabel("m1 (head class mean)")
    axes[0].set_ylabel("m2 (tail class mean)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="loss - min loss")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    toy = Toy(s=args.s, num_t=args.num_t)
    m1, m2 = grid(*args.m1, args.step), grid(*args.m2, args.step)
    losses = landscapes(toy, m1, m2, make_tau(args), args.margin, args.distance)
    rows = summarise(losses, m1, m2, toy.means)
    sched = args.tau_schedule + (f"(T={args.temperature})" if args.tau_schedule == "exp_decay" else "")
    title = (
        f"0.95 N(0, {args.s}^2) + 0.05 N(2, {args.s}^2); tau0={args.tau} {sched}, margin={args.margin}, "
        f"d={args.distance}, {args.num_t} timesteps, grid step {args.step}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plot(losses, rows, m1, m2, toy.means, title, args.out / "fig2_toy.png")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"config": config, "truth": list(toy.means), "phi": list(PHI), "landscapes": rows}
    (args.out / "fig2_toy.json").write_text(json.dumps(result, indent=2) + "\n")

    print(title)
    print(f"{'landscape':<22}{'arg-min m1':>11}{'arg-min m2':>11}{'dist to (0,2)':>15}")
    for name, row in rows.items():
        label = "diffusion only" if name == "diffusion" else f"diffusion + {name}"
        edge = "  (grid edge)" if row["on_grid_edge"] else ""
        print(
            f"{label:<22}{row['argmin'][0]:>11.2f}{row['argmin'][1]:>11.2f}{row['distance_from_truth']:>15.3f}{edge}"
        )
    print(f"wrote {args.out / 'fig2_toy.png'} and {args.out / 'fig2_toy.json'}")
    return result


if __name__ == "__main__":
    main()
