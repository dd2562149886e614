"""Will a run fit? What training needs in memory, estimated before it starts, against what is free."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from vae.config.schema import Config
from vae.device import available_bytes, gib
from vae.errors import UserError
from vae.model.priors import LatentPrior
from vae.model.vae import build_model

FLOAT = 4  # bytes


def estimate_bytes(cfg: Config, shape: tuple[int, int, int], images: int) -> dict[str, int]:
    """Bytes that training holds at its peak, by part.

    The weights, their gradients and Adam's two moments; one batch's activations (each layer's
    output of a forward pass over the batch's loss.iwae_k samples, measured on the meta device, kept
    for the backward pass and matched there by a gradient of the same size; the loss's
    elementwise terms over the decoder's outputs; a mixture prior's (k, B, K) log-densities); and the `images`,
    one uint8 tensor of (C, H, W) `shape` each on the device.
    """
    pixels = math.prod(shape)
    batch, k = cfg.train.batch_size, cfg.loss.iwae_k
    outputs = []
    with torch.device("meta"):  # shapes only: no memory, no random numbers
        model = build_model(cfg.model, shape)
        hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(out.numel()))
                 for m in model.modules() if not list(m.children()) and not isinstance(m, LatentPrior)]
        model(torch.empty(batch, pixels), torch.empty(k, batch, model.noise_dim))
    for hook in hooks:
        hook.remove()
    n_params = sum(p.numel() for p in model.parameters())
    outputs_per_image = pixels * model.likelihood.params  # the decoder's, which the loss runs over
    if cfg.model.prior != "normal":  # a mixture's log-densities: (k, B, K) components, their sum and exponentials
        outputs.append(3 * k * batch * cfg.model.prior_components)
    return {"weights, gradients and Adam's moments": 4 * FLOAT * n_params,
            **({"the average of the weights": FLOAT * n_params} if cfg.train.ema_decay else {}),
            "one batch's activations": 2 * FLOAT * sum(outputs) + 3 * FLOAT * k * batch * outputs_per_image,
            "the images": images * pixels}


def check_memory(cfg: Config, shape: tuple[int, int, int], images: int, device: torch.device, share: int = 1) -> None:
    """Refuse a run on `images` of `shape`, loaded on `device` already, whose estimated peak does not fit in its
    share of the memory there: a 1/`share` part when that many processes (a sweep's workers) start on it at once.

    The free memory is measured with the images in it, so the memory they hold is added back to it: each byte of
    them counts once, in the peak. (Added before the share is taken: the other workers' images may not be loaded
    yet, and when they are, this errs on the safe side.)
    """
    parts = estimate_bytes(cfg, shape, images)
    needed, free = sum(parts.values()), (available_bytes(device) + parts["the images"]) // share
    if needed > free:
        detail = ", ".join(f"{name} {gib(n)}" for name, n in parts.items())
        shared = f" (its share of {share} workers)" if share > 1 else ""
        raise UserError(f"this run needs about {gib(needed)} of memory on {device} ({detail}) but only "
                        f"{gib(free)} is available{shared}: lower train.batch_size or loss.iwae_k, or make the "
                        f"model smaller" + (", or run fewer --workers" if share > 1 else ""))


@contextmanager
def out_of_memory_reported(device: torch.device):
    """An allocation that fails anyway (the estimate is rough) becomes one line."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"out of memory on {device} ({first[:160]}); the last checkpoint is kept: lower "
                        f"train.batch_size or loss.iwae_k, or make the model smaller") from None
