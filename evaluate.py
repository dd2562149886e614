"""Evaluate a checkpoint: python evaluate.py --checkpoint outputs/mnist/checkpoints/best.pt [section.key=value ...]"""
from __future__ import annotations

from vae.checkpoint_eval import evaluate_checkpoint
from vae.cli import ArgumentParser, run
from vae.report import metric_rows


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        description="ELBO split, IWAE NLL, KL diagnostics, pictures and report of a checkpoint.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT|RUN_DIR",
                        help="a checkpoint file, or a run directory (uses checkpoints/last.pt)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="e.g. data.root=DIR eval.iwae_samples=500 eval.split=train viz.digit=7")
    args = parser.parse_intermixed_args(argv)  # flags may stand between the overrides
    metrics = evaluate_checkpoint(args.checkpoint, args.overrides)
    width = max(len(k) for k, _ in metric_rows(metrics))
    for key, value in metric_rows(metrics):
        print(f"{key:<{width}}  {value}")
    ranked = sorted(enumerate(metrics["kl_per_dim"]), key=lambda p: -p[1])
    print("KL per dim (nats): " + ", ".join(f"z{d} {kl:.2f}" for d, kl in ranked))
    print(f"wrote {metrics['report']} and the pictures and metrics.json beside it in eval/")


if __name__ == "__main__":
    run(main)
