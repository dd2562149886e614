"""A config's training step as issue 31 found it against ours, side by side in one process.

    python -m bench.step_speed [--configs mnist,mnist_cpu_hour] [--threads N]

"As filed" is autograd's step with the Bernoulli log-likelihood through torch's cross-entropy
(`binary_cross_entropy_with_logits`) and torch's ELU, at the precision `auto` took then (bf16 exactly where the CPU
has bf16 products); "ours" is the step make_step gives now (the written-out step where it fits), at
the precision (and, under train.compile=auto, compiling) `auto` picks now by timing. Both run on the threads
given (--threads; `train.threads` is not applied: bench/auto_choice.py measures that choice), on copies of one
model, on synthetic 8-bit images of MNIST's shape, in alternating rounds (vae/train/speed.py's compare_steps). An
epoch is its steps plus a per-epoch evaluation that neither changes, so the ratio of step times bounds the ratio
of epochs per hour from above.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from bench.measure import configs_from_command_line, synthetic_splits
from vae.config.load import load_config
from vae.device import native_bf16
from vae.model import likelihoods, vae
from vae.model.vae import build_model
from vae.train.choose_step import make_step
from vae.train.distributed import World
from vae.train.optimizer import make_optimizer
from vae.train.speed import (
    compare_steps,
    fastest,
    precisions_to_time,
    speed_of,
    step_milliseconds,
    step_name,
    steps_to_time,
)
from vae.train.step import Speed

CPU = torch.device("cpu")


def torch_cross_entropy(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The Bernoulli log-likelihood as filed: autograd through torch's cross-entropy from logits."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(dim=-1)


@contextmanager
def as_filed():
    """Inside, the Bernoulli log-likelihood is torch's cross-entropy and a model built takes torch's nn.ELU."""
    with mock.patch.object(likelihoods, "bernoulli_log_likelihood", torch_cross_entropy), \
            mock.patch.dict(vae.ACTIVATION_MODULES, elu=nn.ELU):
        yield


def steps_compared(config: str, images: int = 10_000, round_seconds: float = 1.0, overrides: tuple[str, ...] = ()
                   ) -> dict:
    """ms per step of the config's step as filed and ours, and the precisions they ran at."""
    cfg = load_config(config, ["train.device=cpu", *overrides])
    splits = synthetic_splits(images)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with as_filed():
        torch.manual_seed(0)
        filed_model = build_model(cfg.model)  # the same weights (an ELU has none)
    filed_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and native_bf16(CPU))
    ours = speed_of(*fastest(step_milliseconds(cfg, model, splits, CPU, 1,
                                               steps_to_time(cfg, precisions_to_time(cfg, CPU, None)))))
    filed_cfg = load_config(config, ["train.device=cpu", *overrides, "train.fast_step=false"])
    steps = {}
    filed_speed = Speed(filed_bf16, torch.get_num_threads())
    for name, step_cfg, speed in (("as filed", filed_cfg, filed_speed), ("ours", cfg, ours)):
        net = copy.deepcopy(model) if name == "ours" else filed_model
        opt = make_optimizer(net, cfg.train)
        steps[name] = make_step(step_cfg, net, opt, splits, World(), CPU, speed)
    filed = steps["as filed"]

    def filed_step(*args):
        with as_filed():
            filed(*args)
    steps["as filed"] = filed_step
    ms = compare_steps(steps, splits.train, cfg.train.batch_size, cfg.loss.beta, CPU, round_seconds)
    return {"ms": ms, "precision": {"as filed": "bf16" if filed_bf16 else "fp32",
                                    "ours": step_name(ours.precision, ours.compiled)}}


def main() -> None:
    for config in configs_from_command_line(__doc__.splitlines()[0], "mnist,mnist_cpu_hour"):
        r = steps_compared(config)
        ms, p = r["ms"], r["precision"]
        print(f"{config:>20}: as filed {ms['as filed']:7.2f} ms a step ({p['as filed']}), ours {ms['ours']:7.2f} ms "
              f"({p['ours']}): {ms['as filed'] / ms['ours']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
