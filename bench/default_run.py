"""`make train` against the published reference loop: the default config (configs/mnist.yaml) run as make train
runs it, through train() with its start-up, `auto`'s timing and any compiling, beside pytorch/examples' VAE loop,
10 epochs each, in one process.

    python -m bench.default_run --data ../shared/data [--rounds 1] [--device cpu] [section.key=value ...]

(overrides, such as train.precision=fp32 train.compile=false, change the default run's config.)

Per round: the reference's epochs (train + test, bench/reference.py), then the default run's (its metrics rows:
training, evaluation, pictures and checkpoints; the first from train()'s start). Prints the median of epochs
2-10 of each and their ratio, the whole runs' ratio (ours from calling train(), so with the start-up, the
timing and the compiling; the reference from its first epoch), the final test losses, and the matrix-product
floor (bench/measure.py's floor_seconds, at the precision the run chose) as a share of our median epoch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from bench.measure import floor_seconds
from bench.reference import run_reference
from vae.config.load import load_config
from vae.train.loop import train

EPOCHS = 10


def default_run(data: str, out: str, device: str, overrides: list[str]) -> tuple[list[dict], float, dict]:
    """The default config's rows, the seconds from calling train() to its return, and its run.json."""
    cfg = load_config("mnist", [f"data.root={data}", f"output.dir={out}", f"train.device={device}", *overrides])
    t0 = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - t0
    return result.rows, seconds, json.loads((result.run_dir / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the two runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="changes to the default config")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, device {device}", flush=True)
    reference, ours, whole = [], [], {"reference": [], "ours": []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            rows = run_reference(args.data, EPOCHS, device)
            reference.append(rows)
            whole["reference"].append(sum(row["total_s"] for row in rows))
            print(f"round {r + 1} reference: " + ", ".join(f"{row['total_s']:.2f}" for row in rows)
                  + f" s, test {rows[-1]['test_loss']:.3f}", flush=True)
            rows, seconds, info = default_run(args.data, f"{scratch}/{r}", args.device, args.overrides)
            ours.append(rows)
            whole["ours"].append(seconds)
            speed = f"{info['precision']}{', compiled' if info['compiled'] else ''}, {info['threads']} threads"
            print(f"round {r + 1} ours ({speed}): " + ", ".join(f"{row['seconds']:.2f}" for row in rows)
                  + f" s, test {rows[-1]['test_loss']:.3f}; train() took {seconds:.1f} s", flush=True)
    median_ref = statistics.median(row["total_s"] for rows in reference for row in rows[1:])
    median_ours = statistics.median(row["seconds"] for rows in ours for row in rows[1:])
    floor = floor_seconds(128, torch.bfloat16 if info["precision"] == "bf16" else torch.float32, device, 60_000)
    print(f"epochs 2-{EPOCHS}, median: reference {median_ref:.3f} s, ours {median_ours:.3f} s: "
          f"{median_ref / median_ours:.2f}x")
    ref_s, ours_s = statistics.mean(whole["reference"]), statistics.mean(whole["ours"])
    print(f"whole runs: reference {ref_s:.1f} s, ours {ours_s:.1f} s: {ref_s / ours_s:.2f}x")
    print(f"final test loss: reference {reference[-1][-1]['test_loss']:.3f}, ours {ours[-1][-1]['test_loss']:.3f}; "
          f"the {info['precision']} floor {floor:.3f} s an epoch, {floor / median_ours:.0%} of ours")


if __name__ == "__main__":
    main()
