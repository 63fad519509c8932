"""Paper Figs. 5-8 style sample grids: tail classes (fewest training images first) and random classes, per model.

    python experiments/sample_grids.py [--dataset cifar100lt] [--smoke] [--classes 10] [--per-class 10]

Trains the models it needs when they are missing (as experiments/reproduce.py does: DDPM, DDPM + DiffROP, CBDM,
CBDM + DiffROP), then draws with each model's own evaluation sampler and guidance w (stored in its checkpoint),
the same noise for every model so the grids compare row by row. One row per class. Writes
experiments/results/samples_<dataset>__<method>_{tail,random}.png (smoke: experiments/results/smoke/).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from diffrop.build import net_from_checkpoint
from diffrop.diffusion.sampling import SamplerSpec, sample
from diffrop.paper.cells import Cell, Options, model_dir
from diffrop.paper.reproduce import Driver

METHODS = ("ddpm", "ddpm_pcl", "cbdm", "cbdm_pcl")


def pick_classes(run: Path, n: int, seed: int = 0) -> dict[str, list[int]]:
    """Tail = the n classes with the fewest training images (fewest first); random = n classes drawn by seed."""
    counts = json.loads((run / "data_summary.json").read_text())["class_counts"]
    tail = sorted(range(len(counts)), key=lambda c: (counts[c], -c))[:n]
    random = torch.randperm(len(counts), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return {"tail": tail, "random": random.tolist()}


@torch.no_grad()
def draw(ckpt: Path, classes: list[int], per_class: int, seed: int, device: torch.device) -> torch.Tensor:
    net, schedule, cfg, _ = net_from_checkpoint(ckpt)
    net, schedule = net.to(device), schedule.to(device)
    spec = SamplerSpec(**OmegaConf.to_container(cfg.sampler, resolve=True))  # the run's own sampler setting
    y = torch.tensor(classes, device=device).repeat_interleave(per_class)
    shape = (len(y), net.in_channels, net.image_size, net.image_size)
    return sample(net, schedule, y, shape, spec, torch.Generator(device).manual_seed(seed))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar100lt", choices=("cifar10lt", "cifar100lt"))
    p.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE", "0") not in ("", "0"))
    p.add_argument("--runs", type=Path)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("experiments/results"))
    p.add_argument(
        "--train", action="append", default=[], metavar="KEY=VALUE", help="extra src/train.py override"
    )
    a = p.parse_args()
    root = a.runs or Path("logs/smoke" if a.smoke else "logs/paper")
    driver = Driver("samples", Options(root=root, smoke=a.smoke, train_overrides=a.train))
    cells = [Cell("samples", f"{a.dataset}__{m}", f"{a.dataset}/{m}", None) for m in METHODS]
    states = driver.train(cells)
    out = a.out / "smoke" if a.smoke else a.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for cell in cells:
        if states[cell.experiment][0] != "done":
            print(f"skip {cell.cell}: training {states[cell.experiment]}")
            continue
        run = model_dir(root, cell.experiment)
        for kind, classes in pick_classes(run, a.classes, a.seed).items():
            x = draw(run / "checkpoints" / "last.ckpt", classes, a.per_class, a.seed, device)
            path = out / f"samples_{cell.cell}_{kind}.png"
            save_image((x.cpu() + 1) / 2, path, nrow=a.per_class)
            print(f"{path}: classes {classes} (one row each)")


if __name__ == "__main__":
    main()
