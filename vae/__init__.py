"""A variational autoencoder for MNIST-class data: config, data, model, loss, training, checkpoints.

`from vae import load` gives a trained model (vae.api); it is imported on first use, so that
importing a submodule (the sweep's parent process, say) does not pull in torch.
"""
from __future__ import annotations

import os

if os.name != "posix":  # run directories are locked with fcntl, which Windows lacks
    raise ImportError("vae needs a POSIX system (Linux or macOS); on Windows, run it in WSL")

__all__ = ["Model", "UserError", "load"]


def __getattr__(name: str):
    if name in ("Model", "load"):
        from vae import api
        return getattr(api, name)
    if name == "UserError":
        from vae.errors import UserError
        return UserError
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
