"""Evaluate a checkpoint: python evaluate.py --checkpoint RUN_DIR|CKPT [section.key=value ...]
Score new data:        python evaluate.py --checkpoint RUN_DIR|CKPT --against SOURCE [--transform T] [--out DIR]
Compare runs:          python evaluate.py --compare SWEEP_DIR|RUN_DIR ... [--out DIR] [eval.key=value ...]"""
from __future__ import annotations

import re
from pathlib import Path

from vae.cli import ArgumentParser, run
from vae.evaluate.report import metric_rows


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        description="ELBO split, IWAE NLL, KL diagnostics, pictures and report of a checkpoint; or of many runs, "
                    "compared.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="CKPT|RUN_DIR",
                       help="a checkpoint file, or a run directory (uses checkpoints/last.pt)")
    which.add_argument("--compare", nargs="+", metavar="SWEEP_DIR|RUN_DIR", type=Path,
                       help="evaluate every run's last.pt not yet evaluated with these eval.* settings, then "
                            "write comparison.csv, .json and .html")
    parser.add_argument("--against", metavar="SOURCE",
                        help="with --checkpoint: score new data against the run's score.reference split: a split "
                             "(test, val, train), heldout (the classes outside data.classes), a dataset "
                             "(mnist, fashion_mnist, kmnist: its test images under data.root), or a folder of "
                             "images or a .npz file")
    parser.add_argument("--transform", metavar="T",
                        help="with --against: transform the new images first (hflip, vflip, rot90: mirrored, upside "
                             "down, a quarter turn; invert; noise: uniform random pixels; constant: one grey level "
                             "each)")
    parser.add_argument("--out", type=Path, help="with --compare: where to write (default: the sweep directory "
                                                 "when one is given, else outputs/comparison); with --against: "
                                                 "(default: <run>/scores/<SOURCE>[-<T>])")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="e.g. data.root=DIR eval.iwae_samples=500 eval.split=train viz.digit=7")
    args = parser.parse_intermixed_args(argv)  # flags may stand between the overrides
    if args.against and not args.checkpoint:
        parser.error("--against scores new data against one run: pass --checkpoint RUN_DIR|CKPT")
    if args.transform and not args.against:
        parser.error("--transform transforms the data of --against: pass --against SOURCE")
    # torch (seconds to import) loads only once the arguments are checked
    from vae.denormals import flushed_denormals
    with flushed_denormals():
        run_command(args)


def run_command(args) -> None:
    """The command on its checked arguments."""
    from vae.compare.compare import compare, default_out
    from vae.evaluate.analyze import evaluate_checkpoint
    if args.compare:
        # --compare takes the words after it; the overrides among them look like section.key=value
        overrides = args.overrides + [str(p) for p in args.compare if re.match(r"^\w+\.\w+=", str(p))]
        paths = [p for p in args.compare if str(p) not in overrides]
        out = args.out or default_out(paths)
        result = compare(paths, out, overrides)
        print(f"compared {len(result['runs'])} runs in {len(result['groups'])} groups "
              f"(differing in {', '.join(result['differing_keys']) or 'nothing but train.seed'}); wrote "
              f"{out / 'comparison.html'} and comparison.csv, comparison.json beside it")
        return
    if args.against:
        from vae.novelty.against import score_against
        scored = score_against(args.checkpoint, args.against, args.transform, args.overrides, args.out)
        print(scored["summary"])
        for name, m in scored["scores"].items():
            print(f"  {name:<16} new {m['new_mean']:10.3f}  reference {m['reference_mean']:10.3f} nats   "
                  f"AUROC {m['auroc']:.3f}  AUPR {m['aupr']:.3f}  FPR@95%TPR {m['fpr_at_95_tpr']:.3f}")
        print(f"wrote {scored['out']}/scores.html and, beside it, scores.csv, scores.npz and metrics.json")
        return
    metrics = evaluate_checkpoint(args.checkpoint, args.overrides)
    width = max(len(k) for k, _ in metric_rows(metrics))
    for key, value in metric_rows(metrics):
        print(f"{key:<{width}}  {value}")
    if metrics["kl_per_dim"] is not None:  # not defined against a mixture prior or under a flow (said above)
        z2 = metrics.get("kl_per_dim_z2")  # with two stochastic layers: z1[d] and z2[d]
        named = [(f"z1[{d}]" if z2 is not None else f"z{d}", kl) for d, kl in enumerate(metrics["kl_per_dim"])]
        named += [(f"z2[{d}]", kl) for d, kl in enumerate(z2 or [])]
        print("KL per dim (nats): " + ", ".join(f"{name} {kl:.2f}" for name, kl in sorted(named, key=lambda p: -p[1])))
    print(f"wrote {metrics['report']} and, in eval/ beside it, the pictures, metrics.json and latents.npz")


def cli() -> None:
    """The command `vae-evaluate` (and `python -m vae evaluate`, and evaluate.py in a checkout)."""
    run(main)
