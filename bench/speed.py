"""Side-by-side speed benchmark: the published PyTorch VAE example's loop against this project's training path.

    python -m bench.speed --data ../shared/data [--epochs 10] [--device cpu|cuda] [--threads N]
                          [--variants compile,bf16,eager,...] [--fast 256:3e-3,512:4e-3] [--scaling]

Everything runs in this one process on the same machine and data, with the 784-400-20 MLP and the
Bernoulli cross-entropy + analytic KL objective (bench/reference.py against make_step and run_epoch).
It prints, in order:
  1. the floor: the step's matrix products timed alone, as seconds per epoch (fp32 and bf16);
  2. the reference loop and ours at the classic settings (batch 128, Adam 1e-3): s/epoch (train,
     train + test), samples/s, peak memory (one epoch, in a fresh process on the CPU), final test
     loss, time to 106 nats, the floor as a fraction of the epoch time; on the CPU ours is the written-out
     step (train.fast_step), on CUDA each full batch's step replayed as a CUDA graph (train.cuda_graph);
     `--variants` adds ours with torch.compile, bf16 autocast, without the graph (eager), with autograd's
     step (autograd), or a +-join of these; then the ratio;
  3. time to 106 nats for each batch:lr in `--fast` (stopping once it is reached);
  4. with `--scaling`, s/epoch for batch sizes 64..4096 and hidden widths 200..1600.
A speed ratio only counts when both reach the same final test loss within 0.5 nats.
"""
from __future__ import annotations

import argparse
import platform

import torch

from bench.measure import TARGET_NATS, floor_seconds, fresh_process_peak, graph_replay_seconds, run_ours, summarize
from bench.reference import run_reference
from vae.config.schema import TrainConfig
from vae.data.mnist import load_dataset

SAME_LOSS_NATS = 0.5  # a speed ratio counts only when the final test losses agree this well


def variant_config(variant: str, batch_size: int = 128, lr: float = 1e-3) -> TrainConfig:
    """'ours', or a +-join of compile, bf16, eager (no CUDA graph) and autograd (not the CPU's written-out step,
    train.fast_step=false), as our training settings."""
    options = set(variant.split("+"))
    return TrainConfig(batch_size=batch_size, lr=lr, compile="compile" in options, cuda_graph="eager" not in options,
                       precision="bf16" if "bf16" in options else "fp32", fast_step="autograd" not in options)


def benchmark(data: str, epochs: int, device: torch.device, variants: list[str] = (), fast: list[str] = ()) -> dict:
    """Every number the benchmark prints, measured in this process: the floors, then one summary per loop
    (see bench.measure.summarize) under "loops", with the reference first, and the ratios."""
    splits = load_dataset(data, download=False, device=device)
    n_train = len(splits[0])
    floor = {"fp32": floor_seconds(128, torch.float32, device, n_train),
             "bf16": floor_seconds(128, torch.bfloat16, device, n_train)}
    loops = {"reference": summarize(run_reference(data, epochs, device), n_train,
                                    fresh_process_peak(data, device, None), floor["fp32"])}
    for variant in ["ours", *variants]:
        cfg = variant_config(variant)
        name = variant if variant == "ours" else f"ours+{variant}"
        try:
            rows = run_ours(splits, epochs, device, cfg)
        except Exception as e:  # noqa: BLE001 - one variant failing should not lose the others' numbers
            loops[name] = {"failed": f"{type(e).__name__}: {e}"}
            continue
        loops[name] = summarize(rows, n_train, fresh_process_peak(data, device, cfg), floor[cfg.precision])
    for setting in fast:
        batch, lr = setting.split(":")
        cfg = variant_config("ours", int(batch), float(lr))
        rows = run_ours(splits, epochs, device, cfg, stop_at=TARGET_NATS)
        loops[f"ours {setting}"] = summarize(rows, n_train, fresh_process_peak(data, device, cfg),
                                             floor_seconds(int(batch), torch.float32, device, n_train))
    ref, ours = loops["reference"], loops["ours"]
    result = {"examples": n_train, "floor": floor, "loops": loops}
    if "failed" not in ours:
        result["ratio"] = {"train": ref["train_s"] / ours["train_s"], "total": ref["total_s"] / ours["total_s"],
                           "same_loss": abs(ref["final"] - ours["final"]) <= SAME_LOSS_NATS}
    if device.type == "cuda":
        result["graphed_step_s"] = dict(zip(("loop", "replay"), graph_replay_seconds(splits[0], device)))
    return result


def loop_line(name: str, s: dict) -> str:
    if "failed" in s:
        return f"{name}: failed: {s['failed']}"
    reached = f"{s['to_target']:6.1f} s" if s["to_target"] else "   never"
    return (f"{name:<16} {s['train_s']:6.3f} s/epoch train ({s['steady_s']:6.3f} from epoch 2, "
            f"{s['train_s'] * s['epochs']:6.2f} s in all)  {s['total_s']:6.3f} train+test  "
            f"{s['samples_per_s']:6.0f} samples/s  peak {s['peak_bytes'] / 2**20:5.0f} MiB  final test "
            f"{s['final']:8.3f} nats  to {TARGET_NATS:.0f}: {reached}  floor/train {s['floor_share']:4.0%}")


def print_result(result: dict) -> None:
    floor, loops, ref = result["floor"], result["loops"], result["loops"]["reference"]
    print(f"floor at batch 128 (matrix products only, {result['examples']:,} examples): fp32 {floor['fp32']:.2f} "
          f"s/epoch, bf16 {floor['bf16']:.2f} s/epoch")
    for name, s in loops.items():
        print(loop_line(name, s))
        if name.startswith("ours ") and s["to_target"] and ref["to_target"]:
            print(f"  time to {TARGET_NATS:.0f} nats: {ref['to_target'] / s['to_target']:.1f}x the reference's "
                  f"({s['epochs']} epochs)")
    if "graphed_step_s" in result:
        g = result["graphed_step_s"]
        print(f"graphed step at batch 128: {g['loop'] * 1e6:.0f} us in the training loop, {g['replay'] * 1e6:.0f} us "
              f"for the graph's replays alone")
    if "ratio" in result:
        r = result["ratio"]
        print(f"ratio (reference / ours): {r['train']:.2f}x train, {r['total']:.2f}x train+test; final test losses "
              + (f"agree within {SAME_LOSS_NATS} nats" if r["same_loss"] else
                 f"DIFFER by more than {SAME_LOSS_NATS} nats: the ratio does not count"))


def scaling(train, device: torch.device, widths=(200, 400, 800, 1600),
            batches=(64, 128, 256, 512, 1024, 2048, 4096)) -> dict[tuple[int, int], tuple[float, float]]:
    """(batch, width) -> (s/epoch of one training epoch, the fp32 floor's fraction of it)."""
    table = {}
    for batch in batches:
        for width in widths:
            rows = run_ours((train, None), 1, device, TrainConfig(batch_size=batch), hidden=width)
            floor = floor_seconds(batch, torch.float32, device, len(train), hidden=width, reps=5)
            table[batch, width] = rows[0]["train_s"], floor / rows[0]["train_s"]
    return table


def print_scaling(table: dict) -> None:
    widths = sorted({w for _, w in table})
    print("s/epoch (fraction of the fp32 matrix-product floor) by batch size (rows) and hidden width (columns)")
    print(f"{'batch':>6} " + " ".join(f"{w:>14}" for w in widths))
    for batch in sorted({b for b, _ in table}):
        print(f"{batch:>6} " + " ".join(f"{table[batch, w][0]:7.2f} ({table[batch, w][1]:4.0%})".rjust(14)
                                        for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variants", default="",
                        help="comma list of compile, bf16, eager (no CUDA graph), autograd (not the written-out CPU "
                             "step) or their +-joins: also run ours so")
    parser.add_argument("--fast", default="", help="comma list of batch:lr to time to 106 nats, e.g. 256:3e-3")
    parser.add_argument("--scaling", action="store_true", help="also print s/epoch by batch size and width")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
          flush=True)
    print_result(benchmark(args.data, args.epochs, device, [v for v in args.variants.split(",") if v],
                           [f for f in args.fast.split(",") if f]))
    if args.scaling:
        print_scaling(scaling(load_dataset(args.data, download=False, device=device)[0], device))


if __name__ == "__main__":
    main()
