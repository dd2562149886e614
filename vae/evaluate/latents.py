"""eval/latents.npz and eval/latents.csv: every evaluated example's code, for the user's own analysis."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from vae.evaluate.heldout import Posteriors
from vae.files import atomic_write, atomic_write_text


def save_latents(post: Posteriors, labels: torch.Tensor, nll: torch.Tensor, split: str, out: Path) -> None:
    """The posterior of each example (of z1 with two stochastic layers) with its label and nats.

    latents.npz: mu, logvar (N, latent) float32; code (N, code_dim) float32, what the decoder reads (mu, and z2's mean
    beside it under model.skip); label, index (N,) int64; negative_elbo, nll_iwae (N,) float64 nats; split (a 0-d
    string). latents.csv: index, label, mu_0 .. mu_{latent-1}.
    """
    arrays = {"mu": post.mu.float().cpu().numpy(), "logvar": post.logvar.float().cpu().numpy(),
              "code": post.decoded.float().cpu().numpy(),
              "label": labels.cpu().numpy().astype(np.int64), "index": np.arange(len(labels), dtype=np.int64),
              "negative_elbo": (post.recon + post.kl).double().cpu().numpy(),
              "nll_iwae": nll.double().cpu().numpy(), "split": np.array(split)}
    atomic_write(out / "latents.npz", lambda f: np.savez(f, **arrays))
    text = io.StringIO()
    header = ",".join(["index", "label", *(f"mu_{d}" for d in range(arrays["mu"].shape[1]))])
    table = np.column_stack([arrays["index"], arrays["label"], arrays["mu"]])
    np.savetxt(text, table, fmt=["%d", "%d"] + ["%.7g"] * arrays["mu"].shape[1], delimiter=",",
               header=header, comments="")
    atomic_write_text(out / "latents.csv", text.getvalue())
