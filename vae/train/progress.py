"""Where an epoch stands: its example order, the steps done, the running sums of nats, finiteness."""
from __future__ import annotations

import math

import torch

from vae.errors import UserError
from vae.train.distributed import all_reduce, dist_size

NONFINITE_TERMS = ("reconstruction", "KL", "logvar")


class EpochProgress:
    """Where an epoch stands: enough to continue it bit for bit after a stop in the middle.

    Each process adds its own share of every batch's nats to `local`; `merge` folds the shares of
    all processes into `sums`. The double-precision sums of float32 nats are exact, so the order in
    which steps and shares are added does not change them.
    """

    def __init__(self, order: torch.Tensor, step: int = 0, seen: int = 0, sums: torch.Tensor | None = None,
                 seconds: float = 0.0):
        device = order.device
        self.order = order  # (N,) this epoch's shuffled example indices
        self.step = step  # batches done
        self.seen = seen  # examples done
        # nats summed so far: negative ELBO, reconstruction, KL
        self.sums = torch.zeros(3, dtype=torch.float64, device=device) if sums is None else sums
        self.local = torch.zeros(3, dtype=torch.float64, device=device)  # this process's share since `merge`
        self.seconds = seconds  # wall time counted for this epoch so far (train.budget_minutes)
        # which of reconstruction, KL, logvar the first non-finite step had wrong
        self.bad = torch.zeros(3, dtype=torch.bool, device=device)
        self.first_bad_step = torch.tensor(-1, device=device)

    @classmethod
    def begin(cls, n: int, gen: torch.Generator) -> EpochProgress:
        return cls(torch.randperm(n, generator=gen, device=gen.device))

    def batches(self, batch_size: int) -> int:
        """Steps in the whole epoch."""
        return math.ceil(len(self.order) / batch_size)

    def remaining(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Index batches still to do; the last one may be short."""
        return self.order[self.step * batch_size:].split(batch_size)

    def record(self, examples: int, nats: torch.Tensor, logvar_sum: torch.Tensor) -> None:
        """Count a step of `examples` (the whole batch, over all processes) and add this process's
        summed nats (negative ELBO, reconstruction, KL), without waiting for the device."""
        self.step += 1
        self.seen += examples
        self.local += nats.detach().double()
        bad = ~torch.isfinite(torch.stack([nats[1], nats[2], logvar_sum]).detach())
        first = (self.first_bad_step < 0) & bad.any()  # after one bad step everything goes bad
        self.first_bad_step = torch.where(first, self.step, self.first_bad_step)
        self.bad = torch.where(first, bad, self.bad)

    def merge(self) -> None:
        """Add every process's share into `sums` (a collective under torchrun: all ranks call it at the
        same step), and agree on the first non-finite step."""
        self.sums += all_reduce(self.local)
        self.local.zero_()
        if dist_size() > 1:
            never = torch.iinfo(self.first_bad_step.dtype).max
            first = all_reduce(torch.where(self.first_bad_step < 0, never, self.first_bad_step), "min")
            self.bad = all_reduce((self.bad & (self.first_bad_step == first)).int(), "max").bool()
            self.first_bad_step = torch.where(first == never, -1, first)

    def check_finite(self, epoch: int) -> None:
        """Stop (UserError) when a step produced NaN or Inf: nothing of it may reach a checkpoint."""
        if self.bad.any():
            terms = ", ".join(t for t, b in zip(NONFINITE_TERMS, self.bad.tolist()) if b)
            raise UserError(f"training diverged at epoch {epoch}, step {int(self.first_bad_step)}: {terms} "
                            f"not finite. The last checkpoint is kept; lower train.lr or set train.grad_clip")

    def means(self) -> dict[str, float]:
        """Mean nats per example of the batches done so far (the epoch's means once it is done)."""
        loss, recon, kl = (self.sums / max(self.seen, 1)).tolist()
        return {"loss": loss, "recon": recon, "kl": kl}

    def state(self) -> dict:
        return {"order": self.order, "step": self.step, "seen": self.seen, "sums": self.sums,
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> EpochProgress:
        return cls(state["order"].to(device), state["step"], state["seen"], state["sums"].to(device),
                   state["seconds"])
