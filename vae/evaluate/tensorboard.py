"""TensorBoard (logging.tensorboard=true): its writer, and what evaluate.py adds to a run's log there: the
evaluation's numbers as scalars, and the evaluated codes in the projector, each with its label and image."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from vae.data.split import Split
from vae.errors import UserError
from vae.files import atomic_write_text

SPRITE_PIXELS = 8192  # the projector draws every image into one square sprite of at most this many pixels a side


def summary_writer_class():
    """torch's SummaryWriter, or a clear error when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("logging.tensorboard=true needs the tensorboard package: "
                        "pip install tensorboard (or set logging.tensorboard=false)") from None
    return SummaryWriter


def projected(split: Split) -> int:
    """How many of the split's images the projector can show: as many as fit in its sprite."""
    per_side = SPRITE_PIXELS // max(split.shape[1:])
    return min(len(split), per_side * per_side)


def log_evaluation(log_dir: Path, metrics: dict, mu: torch.Tensor, split: Split, epoch: int) -> None:
    """The evaluation's numbers as scalars (eval_test/nll_iwae, ...) and the posterior means `mu` (N, L) as the
    projector's embedding `latents_test`, at the checkpoint's `epoch`."""
    name = metrics["split"]
    config = log_dir / "projector_config.pbtxt"
    before = config.read_text() if config.exists() else ""
    shutil.rmtree(log_dir / f"{epoch:05}" / f"latents_{name}", ignore_errors=True)  # a re-evaluation replaces it
    with summary_writer_class()(log_dir=str(log_dir)) as writer:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(f"eval_{name}/{key}", value, epoch)
        n = projected(split)
        writer.add_embedding(mu[:n].float().cpu(), metadata=[split.classes[y] for y in split.labels[:n].tolist()],
                             label_img=split.images[:n].float().cpu().div(255), global_step=epoch,
                             tag=f"latents_{name}")
    keep_earlier_embeddings(config, before)


def keep_earlier_embeddings(config: Path, before: str) -> None:
    """add_embedding rewrites the projector's config with its own writer's embeddings alone: put back those of
    earlier evaluations (other checkpoints, other splits) that this one did not replace."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
    written = text_format.Parse(config.read_text(), ProjectorConfig())
    merged = text_format.Parse(before, ProjectorConfig())
    kept = [e for e in merged.embeddings if e.tensor_name not in {w.tensor_name for w in written.embeddings}]
    del merged.embeddings[:]
    merged.embeddings.extend([*kept, *written.embeddings])
    atomic_write_text(config, text_format.MessageToString(merged))
