"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded with weights_only."""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import torch

from vae.config.load import from_dict, to_dict
from vae.config.schema import CLASS_NAMES, Config
from vae.data.split import MNIST_SHAPE
from vae.errors import UserError
from vae.files import atomic_write
from vae.run.layout import CHECKPOINTS, last_pt

FORMAT_VERSION = 5
REQUIRED_KEYS = ("format_version", "config", "data", "epoch", "best", "model", "optimizer", "rng", "progress",
                 "average")


def _best_of_v2(state: dict) -> dict:
    """v2 chose best.pt on the test loss and did not record which epoch that was."""
    state = {**state, "format_version": 3}
    if "best_test_loss" in state:  # without it the check of REQUIRED_KEYS names "best" as missing
        state["best"] = {"loss": state.pop("best_test_loss"), "epoch": None}
    return state


def _data_of_v4(state: dict) -> dict:
    """v4 trained on an MNIST-class dataset only: 28x28 grey images of its 10 classes."""
    config = state.get("config")
    dataset = config.get("data", {}).get("dataset", "mnist") if isinstance(config, dict) else "mnist"
    classes = CLASS_NAMES.get(dataset, CLASS_NAMES["mnist"]) if isinstance(dataset, str) else CLASS_NAMES["mnist"]
    return {**state, "format_version": 5, "data": {"shape": list(MNIST_SHAPE), "classes": list(classes)}}


# Each step upgrades a checkpoint of format N to N + 1.
UPGRADES = {
    1: lambda state: {**state, "format_version": 2, "progress": None},  # v1 saved at epoch ends only
    2: _best_of_v2,
    3: lambda state: {**state, "format_version": 4, "average": None},  # v3 kept no average of the weights
    4: _data_of_v4,
}


def checkpoint_state(cfg: Config, splits, *, epoch: int, best: dict, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, gen: torch.Generator, progress: dict | None, precision: str,
                     average: dict | None) -> dict:
    """A checkpoint of this format: after `epoch` epochs of training (and the `progress` state of the next one when
    it stopped inside it), the best evaluation so far, the weights, Adam, every random stream, the precision
    train.precision resolved to, and the `average` state of the weights' moving average."""
    return {"format_version": FORMAT_VERSION, "config": to_dict(cfg), "data": data_info(splits), "epoch": epoch,
            "best": best, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(gen),
            "progress": progress, "precision": precision, "average": average}


def rng_state(gen: torch.Generator) -> dict:
    """The training stream `gen` and torch's global streams (CPU, and every GPU's)."""
    return {"device_type": gen.device.type, "generator": gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def data_info(splits) -> dict:
    """What a checkpoint records of the data it was trained on, so that it is used without the data: the
    images' (C, H, W) and the name of each label."""
    return {"shape": list(splits.shape), "classes": list(splits.classes)}


def check_same_data(state: dict, splits, source: Path) -> None:
    """Refuse to go on with data whose images differ in shape from those the checkpoint `source` learned."""
    if tuple(state["data"]["shape"]) != splits.shape:
        c, h, w = state["data"]["shape"]
        raise UserError(f"{source} was trained on {h}x{w} images of {c} channel(s); the data now read is "
                        f"{splits.shape[1]}x{splits.shape[2]} of {splits.shape[0]} (data.image_size, data.path?)")


def save_checkpoint(state: dict, *paths: Path) -> None:
    """Serialize `state` once and write it atomically to each path, in the order given."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning its checkpoints/last.pt."""
    path = Path(path)
    if path.is_dir():
        last = last_pt(path)
        if not last.is_file():
            raise UserError(f"{path} is a directory without checkpoints/last.pt: not a run directory")
        return last
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return path


def checkpoint_id(data: bytes) -> str:
    """What identifies a checkpoint's content (a run trained further has another): the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (<run>/checkpoints/x.pt -> <run>), or None."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else None


def load_checkpoint(path: str | Path, data: bytes | None = None) -> tuple[dict, Config]:
    """Load and check a checkpoint on the CPU (from `data`, its bytes, when the caller has read them);
    returns (state, the config it was trained with)."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - arbitrary bytes fail in arbitrary ways
        text = str(e)
        unsafe = re.search(r"GLOBAL (\S+)", text)
        if unsafe:
            raise UserError(f"{path} refers to Python code ({unsafe.group(1)}) that would run on load; "
                            f"refusing it (checkpoints hold only tensors and plain data)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = detail.group(1) if detail else (text.strip().split(". ")[0] or type(e).__name__)
        raise UserError(f"{path} is not a readable checkpoint ({reason.strip()[:160]})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no format_version)")
    if type(state["format_version"]) is not int:
        raise UserError(f"{path} has a malformed checkpoint format {state['format_version']!r:.40}: not a "
                        f"checkpoint this project wrote")
    while state["format_version"] in UPGRADES:
        state = UPGRADES[state["format_version"]](state)
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {state['format_version']!r}, which this version "
                        f"cannot read or upgrade (it reads formats 1..{FORMAT_VERSION}): "
                        f"use the version of this project that wrote it")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise UserError(f"{path} is incomplete: missing {', '.join(missing)}")
    info = state["data"]
    shape, classes = (info.get("shape"), info.get("classes")) if isinstance(info, dict) else (None, None)
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and n > 0 for n in shape)
            and isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{path} is malformed: its record of the data ({info!r:.80}) is not an image shape and "
                        f"class names")
    try:
        cfg = from_dict(state["config"])
    except UserError as e:
        raise UserError(f"{path} holds an invalid config: {e}") from None
    average = state["average"]
    whole = isinstance(average, dict) and isinstance(average.get("model"), dict) \
        and isinstance(average.get("updates"), int)
    if not (whole and cfg.train.ema_decay or average is None and not cfg.train.ema_decay):
        raise UserError(f"{path} is inconsistent: its average of the weights ({type(average).__name__}) does not "
                        f"fit its config's train.ema_decay={cfg.train.ema_decay:g}")
    return state, cfg


def evaluated_weights(state: dict) -> dict:
    """The weights every evaluation uses: their average over the steps where the run kept one
    (train.ema_decay), else the model's own."""
    return state["average"]["model"] if state["average"] else state["model"]


def load_state(target, state_dict: dict, source: Path) -> None:
    """`target.load_state_dict(state_dict)` (a module or optimizer), mismatches reported in one line."""
    try:
        target.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{source} does not fit the {type(target).__name__} its config describes: "
                        f"{reason}") from None
