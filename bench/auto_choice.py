"""Does `auto` pick the fastest step? For each config, what train.precision=auto and train.threads=auto measure
before a run (the run's own step in fp32 and bf16, each compiled and not where the config has train.compile=auto,
on 1, 2, 4, ... threads, a second or two) beside a measurement 20x longer, in one process.

    python -m bench.auto_choice [--configs mnist,mnist_cpu_hour,mnist_logistic_hour] [--threads N]

On synthetic 8-bit images of MNIST's shape (10,000 of them; a step's time does not depend on the pixels'
values), on the CPU, on up to --threads threads (torch's default: one per core). Prints per config: auto's ms
per step of each step (precision, compiled or not) and thread count and its pick, the long measurement's, and
whether they agree.
"""
from __future__ import annotations

import torch

from bench.measure import configs_from_command_line, synthetic_splits
from vae.config.load import load_config
from vae.model.vae import build_model
from vae.train.speed import PRECISIONS, ROUND_SECONDS, fastest, step_milliseconds, steps_to_time, thread_counts

LONGER = 20  # the long measurement's rounds, against auto's
CPU = torch.device("cpu")


def choices(config: str, images: int = 10_000, overrides: tuple[str, ...] = ()) -> dict:
    """auto's and the long measurement's ms per step, {step: {threads: ms}}, for `config` (a name or a path)."""
    cfg = load_config(config, ["train.device=cpu", *overrides])
    splits = synthetic_splits(images)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    counts = thread_counts("auto", CPU, torch.get_num_threads())
    steps = steps_to_time(cfg, PRECISIONS)
    return {name: step_milliseconds(cfg, model, splits, CPU, 1, steps, counts, round_seconds=seconds)
            for name, seconds in (("auto", ROUND_SECONDS), ("long", LONGER * ROUND_SECONDS))}


def shown(ms: dict[str, dict[int, float]]) -> str:
    return ", ".join(f"{p} x{n} {t:.2f}" for p, by in ms.items() for n, t in by.items())


def main() -> None:
    for config in configs_from_command_line(__doc__.splitlines()[0], "mnist,mnist_cpu_hour,mnist_logistic_hour"):
        result = choices(config)
        a, b = result["auto"], result["long"]
        print(f"{config:>20}: auto {shown(a)} ms -> {fastest(a)}; {LONGER}x longer {shown(b)} ms -> {fastest(b)}: "
              + ("agree" if fastest(a) == fastest(b) else "DISAGREE"), flush=True)


if __name__ == "__main__":
    main()
