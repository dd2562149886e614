"""mnist_cpu_hour's epochs per hour: the training as issue 31 found it against ours, whole epochs on the genuine data
in one process.

    python -m bench.hour_epochs --data ../shared/data [--epochs 3] [--rounds 2] [--threads N]

Each round trains the config for `--epochs` epochs as filed, then as ours without compile, then as ours (train(),
with its per-epoch evaluation and writes, into a scratch directory). "As filed" is autograd's step with torch's
cross-entropy and torch's ELU, bf16 where the CPU has bf16 products (what `auto` meant then), on all the threads;
"ours" is the run as the config has it now (the written-out step; precision, threads and compiling `auto` timed),
"ours eager" the same with train.compile=false. An epoch's seconds are its row's (vae/train/schedule.py: from the
previous row's end, the first from train()'s start, so with the start-up and the compiling); an hour holds the
first epoch and as many more as fit in the rest at the later epochs' mean over all rounds.
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


def epoch_seconds(data: str, epochs: int, out: str, how: str) -> tuple[list[float], str]:
    """The seconds of each epoch of one run of CONFIG `how` (as filed, ours eager or ours), and the precision and
    threads it trained on."""
    filed = how == "as filed"
    overrides = [f"data.root={data}", "train.device=cpu", f"train.epochs={epochs}", "train.budget_minutes=0",
                 f"output.dir={out}"] + (["train.compile=false"] if how == "ours eager" else [])
    if filed:
        precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
        overrides += ["train.fast_step=false", f"train.precision={precision}", "train.threads=all"]
    with as_filed() if filed else contextlib.nullcontext():
        result = train(load_config(CONFIG, overrides))
    info = json.loads((result.run_dir / "run.json").read_text())
    compiled = ", compiled" if info["compiled"] else ""
    return [row["seconds"] for row in result.rows], f"{info['precision']}{compiled}, {info['threads']} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (at least 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three runs (as filed, ours eager, ours)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: an hour counts the first epoch apart from the later ones")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 products {native_bf16(torch.device('cpu'))}", flush=True)
    seconds = {"as filed": [], "ours eager": [], "ours": []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for name in seconds:
                s, how = epoch_seconds(args.data, args.epochs, f"{scratch}/{r}-{name.replace(' ', '-')}", name)
                seconds[name].append(s)
                print(f"round {r + 1} {name:>10} ({how}): " + ", ".join(f"{x:.2f}" for x in s) + " s",
                      flush=True)
    per_hour = {}
    for name, runs in seconds.items():
        first = statistics.mean(s[0] for s in runs)
        later = statistics.mean(x for s in runs for x in s[1:])
        per_hour[name] = 1 + (3600 - first) / later
        print(f"{name:>10}: first epoch {first:.2f} s, then {later:.2f} s an epoch: {per_hour[name]:.0f} epochs "
              "an hour")
    for name in ("ours eager", "ours"):
        print(f"{name} / as filed: {per_hour[name] / per_hour['as filed']:.2f}x the epochs an hour")


if __name__ == "__main__":
    main()
