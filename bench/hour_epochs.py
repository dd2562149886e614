"""mnist_cpu_hour's epochs per hour: the training as issue 31 found it against ours, whole epochs on the genuine data
in one process.

    python -m bench.hour_epochs --data ../shared/data [--epochs 3] [--rounds 2] [--threads N]

Each round trains the config for `--epochs` epochs as filed, then as ours (train(), with its per-epoch evaluation and
writes, into a scratch directory). "As filed" is autograd's step with torch's cross-entropy and torch's ELU, bf16
where the CPU has bf16 products (what `auto` meant then), on all the threads; "ours" is the run as the config has it
now (the written-out step, precision and threads `auto` timed). An epoch's seconds are its row's
(vae/train/schedule.py: from the previous row's end, the first from train()'s start); epochs per hour are 3600 over
their mean, over all rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile

import torch

from bench.step_speed import as_filed
from vae.config.load import load_config
from vae.device import native_bf16
from vae.train.loop import train

CONFIG = "mnist_cpu_hour"


def epoch_seconds(data: str, epochs: int, out: str, filed: bool) -> tuple[list[float], str]:
    """The seconds of each epoch of one run of CONFIG, and the precision and threads it trained on."""
    overrides = [f"data.root={data}", "train.device=cpu", f"train.epochs={epochs}", "train.budget_minutes=0",
                 f"output.dir={out}"]
    if filed:
        precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
        overrides += ["train.fast_step=false", f"train.precision={precision}", "train.threads=all"]
    with as_filed() if filed else contextlib.nullcontext():
        result = train(load_config(CONFIG, overrides))
    info = json.loads((result.run_dir / "run.json").read_text())
    return [row["seconds"] for row in result.rows], f"{info['precision']}, {info['threads']} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--rounds", type=int, default=2, help="as-filed/ours pairs of runs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 products {native_bf16(torch.device('cpu'))}", flush=True)
    seconds = {"as filed": [], "ours": []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for name in seconds:
                s, how = epoch_seconds(args.data, args.epochs, f"{scratch}/{r}-{name}", name == "as filed")
                seconds[name] += s
                print(f"round {r + 1} {name:>8} ({how}): " + ", ".join(f"{x:.2f}" for x in s) + " s",
                      flush=True)
    per_hour = {name: 3600 / statistics.mean(s) for name, s in seconds.items()}
    for name, s in seconds.items():
        print(f"{name:>8}: {statistics.mean(s):.2f} s an epoch, {per_hour[name]:.0f} epochs an hour")
    print(f"ours / as filed: {per_hour['ours'] / per_hour['as filed']:.2f}x the epochs an hour")


if __name__ == "__main__":
    main()
