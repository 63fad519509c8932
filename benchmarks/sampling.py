"""Sections samplers and sampler-compile: images/s of the samplers (unguided and guided, fp32 and bf16), and a
compiled sampler against the eager one."""

from __future__ import annotations

import statistics
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmarks.harness import TRAIN_CASES, config
from benchmarks.timing import CUDA, interleaved, paired_ratio, timed
from diffrop import build
from diffrop.diffusion.sampling import SamplerSpec, sample


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """ "ddim-100,dpmpp2m-10" -> [("ddim", 100), ("dpmpp2m", 10)]."""
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition("-")
        out.append((name, int(steps)))
    return out


def sampling_case() -> tuple[str, int, DictConfig, torch.device, torch.nn.Module]:
    """The device's first training case as a sampling network: (model, image size, config, device, net in eval)."""
    model, size, _ = TRAIN_CASES["cuda" if CUDA else "cpu"][0]
    cfg = config(model, size, 8)
    device = torch.device("cuda" if CUDA else "cpu")
    net = build.build_net(cfg, 10, in_channels=3, image_size=size).to(device).eval()
    if CUDA:
        net = net.to(memory_format=torch.channels_last)
    return model, size, cfg, device, net


def bench_samplers(args) -> list[dict]:
    model, size, cfg, device, net = sampling_case()
    b = args.sample_batch
    y = torch.arange(b, device=device) % 10
    shape = (b, 3, size, size)
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if CUDA else ["fp32"])
    specs = {}
    for guidance in (0.0, 1.0):
        for precision in precisions:
            for name, steps in parse_samplers(args.samplers):
                eta = 0.0 if name == "ddim" else None
                spec = SamplerSpec(name, steps, eta, guidance, "balanced", b, precision, compile=False)
                specs[(name, steps, guidance, precision)] = spec
    schedules = {n: instantiate(cfg.diffusion, num_steps=n).to(device) for n in {1000, args.ddpm_steps}}

    def call(key) -> float:
        schedule = schedules[key[1] if key[0] == "ddpm" else 1000]  # DDPM visits every step of its T
        return timed(lambda: sample(net, schedule, y, shape, specs[key]))

    for key in specs:  # warm-up: cuDNN autotuning, allocator
        call(key)
    secs = interleaved({key: lambda k=key: call(k) for key in specs}, args.rounds)
    rows = []
    base_name, base_steps = parse_samplers(args.samplers)[0]
    for (name, steps, guidance, precision), v in secs.items():
        base = secs[(base_name, base_steps, guidance, precision)]
        row = {
            "sampler": f"{name}-{steps}",
            "guidance": guidance,
            "precision": precision,
            "model": model,
            "batch": b,
            "images_per_s": b / statistics.median(v),
            f"speedup_vs_{base_name}{base_steps}": paired_ratio(base, v),
            "minutes_per_50k": 50000 * statistics.median(v) / b / 60,
        }
        if guidance:
            row["guided_cost_x"] = paired_ratio(v, secs[(name, steps, 0.0, precision)])
        if precision != "fp32":
            row["speedup_vs_fp32"] = paired_ratio(secs[(name, steps, guidance, "fp32")], v)
        rows.append(row)
    return rows


def bench_sampler_compile(args) -> list[dict]:
    """Eager vs ``sampler.compile=true`` (static shapes; CUDA graphs on a GPU) for the last of ``--samplers``,
    guided (w = 1), in the last of the precisions; plus the largest pixel difference between the two on the same
    noise (uint8 levels), so that a speed-up is never read without its effect on the images."""
    from diffrop.diffusion.samplers.loop import StackedGenerator
    from diffrop.diffusion.sampling_net import sampling_net
    from diffrop.evaluation.generate import to_uint8

    _, size, cfg, device, net = sampling_case()
    b = args.sample_batch
    name, steps = parse_samplers(args.samplers)[-1]
    precision = (args.precisions or ("bf16" if CUDA else "fp32")).split(",")[-1]
    eta = 0.0 if name == "ddim" else None
    specs = {c: SamplerSpec(name, steps, eta, 1.0, "balanced", b, precision, compile=bool(c)) for c in (0, 1)}
    nets = {c: sampling_net(net, spec, device) for c, spec in specs.items()}
    schedule = instantiate(cfg.diffusion).to(device)
    y = torch.arange(b, device=device) % 10

    def draw(c: int) -> torch.Tensor:
        gen = StackedGenerator(range(b), device)
        return sample(nets[c], schedule, y, (b, 3, size, size), specs[c], gen)

    t0 = time.perf_counter()
    images = {c: to_uint8(draw(c)) for c in (1, 0)}  # the first compiled call compiles (and records graphs)
    first_s = time.perf_counter() - t0
    secs = interleaved({c: lambda c=c: timed(lambda: draw(c)) for c in (0, 1)}, args.rounds)
    return [
        {
            "sampler": f"{name}-{steps}",
            "guidance": 1.0,
            "precision": precision,
            "batch": b,
            "cuda_graphs": CUDA,
            "eager_images_per_s": b / statistics.median(secs[0]),
            "compiled_images_per_s": b / statistics.median(secs[1]),
            "speedup": paired_ratio(secs[0], secs[1]),
            "minutes_per_50k_compiled": 50000 * statistics.median(secs[1]) / b / 60,
            "first_calls_s": first_s,
            "max_pixel_diff": int((images[0].int() - images[1].int()).abs().max()),
        }
    ]
