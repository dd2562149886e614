"""Configs' training steps side by side in one process: the hierarchy's step against the one layer's.

    python -m bench.layer_steps [--configs mnist_cpu_hour,mnist_cpu_hour2] [--threads N] [--precision bf16|fp32]
                                [--compile | --no-compile]

Each config's step is the one make_step gives a run of it (the written-out step where it fits, else autograd's),
all at one precision and compiling (not `auto`'s choice, which timing noise can make differ between configs), on
synthetic 8-bit images of MNIST's shape, on batches of the first config's size, in alternating rounds
(vae/train/speed.py's compare_steps). The ratio is each step's milliseconds over the first config's.
"""
from __future__ import annotations

import argparse

import torch

from bench.measure import synthetic_splits
from vae.config.load import load_config
from vae.device import native_bf16
from vae.model.vae import build_model
from vae.train.choose_step import make_step
from vae.train.distributed import World
from vae.train.optimizer import make_optimizer
from vae.train.speed import compare_steps
from vae.train.step import Speed

CPU = torch.device("cpu")


def layer_steps(configs: list[str], speed: Speed, images: int = 10_000, round_seconds: float = 1.0) -> dict[str, float]:
    """ms a step of each config at `speed` on batches of the first config's size, timed in alternating rounds."""
    splits = synthetic_splits(images)
    cfgs, steps = {config: load_config(config, ["train.device=cpu"]) for config in configs}, {}
    for config, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build_model(cfg.model)
        opt = make_optimizer(model, cfg.train)
        steps[config] = make_step(cfg, model, opt, splits, World(), CPU, speed)
    return compare_steps(steps, splits.train, cfgs[configs[0]].train.batch_size, 1.0, CPU, round_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mnist_cpu_hour,mnist_cpu_hour2", help="comma list (names or paths)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16" if native_bf16(CPU) else "fp32")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.precision}{', compiled' if args.compile else ''}")
    ms = layer_steps(args.configs.split(","), Speed(args.precision == "bf16", args.threads, compiled=args.compile))
    first = next(iter(ms.values()))
    for config, t in ms.items():
        print(f"{config:>20}: {t:7.2f} ms a step, {t / first:.2f}x the first", flush=True)


if __name__ == "__main__":
    main()
