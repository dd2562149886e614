"""The machine: the config's device name as a torch.device (or why it cannot be had), whether it has bf16
products, and how much memory it has free."""
from __future__ import annotations

from pathlib import Path

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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has bf16 products in hardware (a CPU with AVX512-BF16 or AMX, a GPU with bf16)."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.cpu._is_avx512_bf16_supported()


def available_bytes(device: torch.device) -> int:
    """Memory free for this run: the GPU's free memory on CUDA (with what torch holds in its cache, freed by this
    process and reused before anything else is asked of the driver), else the system's available memory."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63  # unknown (not Linux): no refusal


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
