"""Does mnist_cpu_hour's epoch time last? Its late epochs (a run trained for hundreds of epochs, resumed) against
its early ones (a fresh run), each as this code runs them and as the code before ran them, whole epochs of train()
in one process, the four runs alternated in each round.

    python -m bench.late_epochs --data ../shared/data --checkpoint RUN [--epochs 4] [--rounds 2] [section.key=value ...]

"Before" is this code with two things put back as they were: subnormal numbers flushed on no thread (now on
every thread torch computes on, vae/denormals.py), and the mixture prior's log-sum-exp and responsibilities
computed with exp() over every component (now exp_or_zero: zero, not computed, below e^-87, where the vectorized
exp is slow). Each run's epochs are its metrics rows' seconds (training, evaluation and writes); the first of each
run holds its start-up and is left out. Every run takes the precision, threads and compiling that `auto` chose
for the first (ours, early), so that only the code differs; overrides (train.compile=false, ...) change every run's
config.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
from unittest import mock

import torch
import torch.nn.functional as F

import vae.model.distributions
import vae.train.loop
from vae.config.load import load_config
from vae.device import native_bf16
from vae.model.distributions import LOG_2PI
from vae.run.checkpoint import load_checkpoint, resolve_checkpoint
from vae.train.fast_step import MixtureLogProb
from vae.train.loop import train

CONFIG = "mnist_cpu_hour"


def mixture_log_prob_before(self: MixtureLogProb, z: torch.Tensor) -> torch.Tensor:
    """MixtureLogProb.__call__ as it was: torch's logsumexp and exp() over all K components."""
    m = self.prior
    precision = torch.exp(-m.logvar)
    weights = torch.cat([-0.5 * precision, m.mu * precision], dim=1)
    const = F.log_softmax(m.logits, 0) - 0.5 * (m.mu * m.mu * precision + m.logvar + LOG_2PI).sum(-1)
    powers = torch.cat([z * z, z], dim=1)
    log_joint = torch.addmm(const, powers, weights.t())
    log_p = torch.logsumexp(log_joint, dim=1)
    self.saved = powers, log_joint.sub_(log_p.unsqueeze(1)).exp_(), precision, weights
    return log_p


@contextlib.contextmanager
def as_before():
    """Inside, training runs as the code before: nothing flushed, every exp() computed."""
    with mock.patch.object(vae.train.loop, "flushed_denormals", contextlib.nullcontext), \
            mock.patch.object(vae.model.distributions, "logsumexp", torch.logsumexp), \
            mock.patch.object(MixtureLogProb, "__call__", mixture_log_prob_before):
        yield


def epoch_seconds(data: str, checkpoint: str | None, epochs: int, out: str, speed: list[str], before: bool
                  ) -> tuple[list[float], dict]:
    """The seconds of each epoch but the first of one run of CONFIG: fresh (`checkpoint` None) or resumed from
    `checkpoint` into `out`, as the code before or ours; and its run.json."""
    start = 0 if checkpoint is None else load_checkpoint(checkpoint)[0]["epoch"]
    overrides = [f"data.root={data}", "train.device=cpu", f"train.epochs={start + epochs}", "train.budget_minutes=0",
                 f"output.dir={out}", "viz.every=100000", *speed]
    with as_before() if before else contextlib.nullcontext():
        result = train(load_config(CONFIG, overrides), resume=checkpoint)
    info = json.loads((result.run_dir / "run.json").read_text())
    return [row["seconds"] for row in result.rows[start + 1:]], info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--checkpoint", required=True, help=f"a run of {CONFIG} trained for hundreds of epochs "
                                                            "(its directory, or a checkpoint file)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (at least 2: the first is left out)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four runs")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="changes to every run's config")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: each run's first epoch holds its start-up and is left out")
    checkpoint = str(resolve_checkpoint(args.checkpoint))
    trained = load_checkpoint(checkpoint)[0]["epoch"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 products {native_bf16(torch.device('cpu'))}; "
          f"late = resumed after {trained} epochs", flush=True)
    runs = [(code, stage) for code in ("ours", "before") for stage in ("early", "late")]
    seconds = {run: [] for run in runs}
    speed = list(args.overrides)
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for code, stage in runs:
                s, info = epoch_seconds(args.data, checkpoint if stage == "late" else None, args.epochs,
                                        f"{scratch}/{r}-{code}-{stage}", speed, code == "before")
                if len(speed) == len(args.overrides):  # every later run as `auto` chose for this one
                    speed += [f"train.precision={info['precision']}", f"train.threads={info['threads']}",
                              f"train.compile={str(info['compiled']).lower()}"]
                    print("all runs: " + " ".join(speed), flush=True)
                seconds[code, stage] += s
                print(f"round {r + 1} {code:>6} {stage:>5}: " + ", ".join(f"{x:.2f}" for x in s) + " s", flush=True)
    mean = {run: statistics.mean(s) for run, s in seconds.items()}
    for code in ("ours", "before"):
        print(f"{code:>6}: early {mean[code, 'early']:.2f} s an epoch, late {mean[code, 'late']:.2f} s: late/early "
              f"{mean[code, 'late'] / mean[code, 'early']:.2f}x")
    print(f"late epochs, before / ours: {mean['before', 'late'] / mean['ours', 'late']:.2f}x; early: "
          f"{mean['before', 'early'] / mean['ours', 'early']:.2f}x")


if __name__ == "__main__":
    main()
