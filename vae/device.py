"""Turn the config's device name into a torch.device, or say clearly why it cannot be had."""
from __future__ import annotations

import torch

from vae.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' / 'cuda:N' must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise UserError(f"train.device={name} but this machine has no such CUDA device; "
                            f"use train.device=cpu or auto")
    return torch.device(name)
