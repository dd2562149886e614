"""Does train.precision=auto pick the faster precision? For each config, what auto measures before a run (the
run's own step in fp32 and bf16, about a second) beside a measurement 20x longer, in one process.

    python -m bench.precision_choice [--configs mnist,mnist_cpu_hour,mnist_logistic_hour] [--threads N]

On synthetic 8-bit images of MNIST's shape (10,000 of them; a step's time does not depend on the pixels'
values), on the CPU. Prints per config: auto's ms per step in each precision and its pick, the long
measurement's, and whether they agree.
"""
from __future__ import annotations

import torch

from bench.measure import configs_from_command_line, synthetic_splits
from vae.config.load import load_config
from vae.model.vae import build_model
from vae.train.speed import ROUND_SECONDS, step_milliseconds

LONGER = 20  # the long measurement's rounds, against auto's


def choices(config: str, images: int = 10_000) -> dict:
    """auto's and the long measurement's ms per step in fp32 and bf16 for `config` (a shipped name or a path)."""
    cfg = load_config(config, ["train.device=cpu"])
    splits = synthetic_splits(images)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    return {name: {p: by[threads] for p, by in step_milliseconds(cfg, model, splits, device, round_seconds=s).items()}
            for name, s in (("auto", ROUND_SECONDS), ("long", LONGER * ROUND_SECONDS))}


def pick(ms: dict[str, float]) -> str:
    return min(ms, key=ms.get)


def main() -> None:
    for config in configs_from_command_line(__doc__.splitlines()[0], "mnist,mnist_cpu_hour,mnist_logistic_hour"):
        result = choices(config)
        a, b = result["auto"], result["long"]
        print(f"{config:>20}: auto fp32 {a['fp32']:7.2f} ms, bf16 {a['bf16']:7.2f} ms -> {pick(a)}; "
              f"{LONGER}x longer: fp32 {b['fp32']:7.2f} ms, bf16 {b['bf16']:7.2f} ms -> {pick(b)} "
              f"(bf16/fp32 {b['bf16'] / b['fp32']:.2f}); " + ("agree" if pick(a) == pick(b) else "DISAGREE"),
              flush=True)


if __name__ == "__main__":
    main()
