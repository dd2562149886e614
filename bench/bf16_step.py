"""Side-by-side: one training step of a config's model in fp32 and under bf16 autocast, by batch size.

    python -m bench.bf16_step [--config configs/mnist_cpu_hour.yaml] [--batches 100,250,1000] [--threads 1]

In one process, on synthetic binary images: for each batch size, the fp32 step and the bf16 step
(train.precision=bf16: the forward pass under autocast) take turns, 5 rounds of --steps steps each,
and the median ms per step and per 1,000 images are printed with their ratio. The same is done
for the matrix products alone (x @ W for the network's first layer) to show what the bf16
instructions give before the casts. bf16 autocast on the CPU needs AVX512-BF16 or AMX to pay.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from vae.config.load import load_config
from vae.config.schema import Config
from vae.data.split import MNIST_SHAPE
from vae.model.vae import build_model
from vae.train.autograd_step import optimizer_step
from vae.train.optimizer import make_optimizer
from vae.train.step import StepOptions

PIXELS = math.prod(MNIST_SHAPE)

ROUNDS = 5


def ms_per_call(run, calls: int) -> float:
    """The ms per call of run() over `calls` calls, after 3 calls of warm-up."""
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls * 1e3


def step_timings(cfg: Config, batches: list[int], steps: int) -> list[dict]:
    """One row per (batch, what) with what = "step" (the project's optimizer_step) or "first mm" (x @ W of the
    first layer): the median ms per call in fp32 and bf16 over ROUNDS alternating rounds."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in batches:
        x = (torch.rand(batch, PIXELS, generator=gen) < 0.2).float()
        eps = torch.randn(cfg.loss.iwae_k, batch, cfg.model.latent_dim, generator=gen)
        models = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            net = build_model(cfg.model)
            opt = make_optimizer(net, cfg.train)
            options = StepOptions(cfg.loss, precision == "bf16", cfg.train.grad_clip)
            models[precision] = lambda net=net, opt=opt, options=options: optimizer_step(
                net, opt, x, eps, options, 1.0, 1 / batch)
        w = torch.randn(PIXELS, cfg.model.hidden_dims[0], generator=gen)
        matmuls = {"fp32": lambda: x @ w, "bf16": lambda xb=x.bfloat16(), wb=w.bfloat16(): xb @ wb}
        for what, runs in (("step", models), ("first mm", matmuls)):
            calls = steps if what == "step" else steps * 10
            times = {"fp32": [], "bf16": []}
            for _ in range(ROUNDS):  # alternate, so that a slow spell of the machine hits both
                for precision in times:
                    times[precision].append(ms_per_call(runs[precision], calls))
            rows.append({"batch": batch, "what": what, **{f"{p}_ms": statistics.median(t) for p, t in times.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/mnist_cpu_hour.yaml")
    parser.add_argument("--batches", default="100,250,1000", help="comma list of batch sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["train.device=cpu"])
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}; "
          f"{args.config}: {cfg.model.hidden_dims} {cfg.model.activation}, latent {cfg.model.latent_dim}, "
          f"iwae_k {cfg.loss.iwae_k}")
    print(f"{'batch':>6} {'what':>10} {'fp32 ms':>9} {'bf16 ms':>9} {'bf16/fp32':>10} {'fp32 ms/1k img':>15}")
    for r in step_timings(cfg, [int(b) for b in args.batches.split(",")], args.steps):
        a, b = r["fp32_ms"], r["bf16_ms"]
        print(f"{r['batch']:>6} {r['what']:>10} {a:9.3f} {b:9.3f} {b / a:10.2f} {a / r['batch'] * 1000:15.2f}")


if __name__ == "__main__":
    main()
