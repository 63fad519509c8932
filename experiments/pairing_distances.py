"""What does PCL's distance d_ij measure under each pairing? Exact for a Bayes-optimal denoiser on digits_lt.

For the empirical training distribution, the best noise prediction of class c is known in closed form: E[x_0 | x_t, c]
is a softmax-weighted mean of that class's training images (weights exp(-|x_t - sqrt(abar_t) x_0^k|^2 / 2(1-abar_t))),
and Eq. 9's posterior mean follows. This script draws pairs of training images of different labels (between) and
of one label (within), noises them at one t either with their own eps each (pairing ``batch``; in training their t
differ too, which only adds noise) or with one shared eps (pairing ``eq12``), and reports the mean per-pixel d_ij,
the share of d that is class signal (between / within - 1), and the summed d that ``distance: sum`` would use.

    python experiments/pairing_distances.py          # ~1 min on a CPU; writes experiments/results/pairing_distances.{md,json}
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffrop.data.datasets import load_digits
from diffrop.data.longtail import longtail_counts, select_longtail
from diffrop.diffusion.schedule import NoiseSchedule

REPO = Path(__file__).resolve().parents[1]
TIMESTEPS = (10, 100, 300, 600, 900)


def training_images(image_size: int, imb_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """digits_lt as the quickstart trains on it: [N, D] in [-1, 1] and labels."""
    full = load_digits(image_size)
    available = torch.bincount(full.labels).tolist()
    train = full.subset(select_longtail(full.labels.numpy(), longtail_counts(max(available), 10, imb_factor)))
    return train.images.flatten(1).float() / 127.5 - 1, train.labels


def bayes_mu(xt: torch.Tensor, t: int, y: torch.Tensor, images, labels, sched: NoiseSchedule) -> torch.Tensor:
    """Eq. 9's posterior mean with the Bayes-optimal denoiser of each sample's class (the empirical class)."""
    abar, abar_prev = sched.alpha_bars[t].double(), sched.alpha_bars_prev[t].double()
    beta, alpha = sched.betas[t].double(), sched.alphas[t].double()
    x0_hat = torch.empty_like(xt)
    for c in y.unique():
        rows, ref = y == c, images[labels == c]
        logits = -torch.cdist(xt[rows], abar.sqrt() * ref).square() / (2 * (1 - abar))
        x0_hat[rows] = logits.softmax(1) @ ref
    # q(x_{t-1} | x_t, x_0) mean with x_0 -> E[x_0 | x_t, c]: the same as Eq. 9 with eps_hat = E[eps | x_t, c]
    return (abar_prev.sqrt() * beta * x0_hat + alpha.sqrt() * (1 - abar_prev) * xt) / (1 - abar)


def pair_indices(labels: torch.Tensor, n: int, same: bool, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    i = torch.randint(0, len(labels), (4 * n,), generator=gen)
    j = torch.randint(0, len(labels), (4 * n,), generator=gen)
    keep = (labels[i] == labels[j]) & (i != j) if same else labels[i] != labels[j]
    return i[keep][:n], j[keep][:n]


def distances(images, labels, t: int, shared_eps: bool, same: bool, n: int, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    sched = instantiate(OmegaConf.load(REPO / "configs" / "diffusion" / "linear_1000.yaml"))  # as training
    i, j = pair_indices(labels, n, same, gen)
    x0 = images.double()
    abar = sched.alpha_bars[t].double()
    eps_i = torch.randn(len(i), x0.shape[1], generator=gen, dtype=torch.float64)
    eps_j = eps_i if shared_eps else torch.randn(len(j), x0.shape[1], generator=gen, dtype=torch.float64)
    xt_i, xt_j = (
        abar.sqrt() * x0[i] + (1 - abar).sqrt() * eps_i,
        abar.sqrt() * x0[j] + (1 - abar).sqrt() * eps_j,
    )
    mu_i = bayes_mu(xt_i, t, labels[i], x0, labels, sched)
    mu_j = bayes_mu(xt_j, t, labels[j], x0, labels, sched)
    d_sum = (mu_i - mu_j).square().sum(1)
    return {"mean": float(d_sum.mean() / x0.shape[1]), "sum": float(d_sum.mean()), "n": len(i)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=8, help="8: the quickstart / PCL study resolution")
    parser.add_argument("--imb-factor", type=float, default=0.1)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "pairing_distances")
    args = parser.parse_args(argv)
    images, labels = training_images(args.image_size, args.imb_factor)
    rows = []
    for t in TIMESTEPS:
        row = {"t": t}
        for pairing, shared in (("batch", False), ("eq12", True)):
            between = distances(images, labels, t, shared, same=False, n=args.pairs, seed=t)
            within = distances(images, labels, t, shared, same=True, n=args.pairs, seed=t + 1)
            row[pairing] = {
                "between": between,
                "within": within,
                "class_share": between["mean"] / within["mean"] - 1,
            }
        rows.append(row)
        print(f"t={t}: " + ", ".join(f"{p} {row[p]['between']['mean']:.4f} / {row[p]['within']['mean']:.4f}"
                                    for p in ("batch", "eq12")), flush=True)  # fmt: skip
    dim = images.shape[1]
    lines = [
        "# PCL's d_ij under each pairing, Bayes-optimal denoiser, digits_lt "
        f"({args.image_size}x{args.image_size}x3 = {dim} values, imbalance {args.imb_factor:g}, {len(labels)} images)",
        "",
        f"Mean over {args.pairs} pairs per cell (`python experiments/pairing_distances.py`). d = mean over values "
        "of (mu_i - mu_j)^2, mu from Eq. 9 with the exact E[eps | x_t, c] of the training set; between = different "
        "labels, within = same label; class share = between / within - 1 (how much of d is class signal); "
        "exp(-d_sum) is what phi = exp would give with `distance: sum` at the between-class mean.",
        "",
        "| t | batch: between / within | batch: class share | eq12: between / within | eq12: class share "
        "| eq12: d_sum between | exp(-d_sum) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, e = r["batch"], r["eq12"]
        d_sum = e["between"]["sum"]
        lines.append(
            f"| {r['t']} | {b['between']['mean']:.4f} / {b['within']['mean']:.4f} | {100 * b['class_share']:.0f}% "
            f"| {e['between']['mean']:.4f} / {e['within']['mean']:.4f} | {100 * e['class_share']:.0f}% "
            f"| {d_sum:.3g} | {math.exp(-d_sum):.2g} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "rows": rows}, indent=1))  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
