"""Evaluate a checkpoint: python evaluate.py --checkpoint outputs/mnist/checkpoints/best.pt [section.key=value ...]"""
from __future__ import annotations

import argparse

from vae.cli import run
from vae.evaluation import evaluate_checkpoint


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Test-set ELBO, pictures and metrics.json of a checkpoint.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT|RUN_DIR",
                        help="a checkpoint file, or a run directory (uses checkpoints/last.pt)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="e.g. data.root=DIR train.device=cpu viz.digit=7")
    args = parser.parse_args(argv)
    m = evaluate_checkpoint(args.checkpoint, args.overrides)
    print(f"{m['checkpoint']} (epoch {m['epoch']}), {m['examples']} test examples, nats per example:")
    print(f"  negative ELBO {m['loss']:9.3f}")
    print(f"  reconstruction {m['recon']:8.3f}")
    print(f"  KL            {m['kl']:9.3f}")


if __name__ == "__main__":
    run(main)
