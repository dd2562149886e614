"""The splits a config asks for: the dataset's train and test images, a validation split held out of
the training images, and their binarization."""
from __future__ import annotations

from typing import NamedTuple

import torch

from vae.config.schema import DataConfig
from vae.data.mnist import load_dataset
from vae.data.split import Split
from vae.errors import UserError

# data.seed + these seed the fixed binarizations of the training and validation images (the test
# images' is data.seed itself)
TRAIN_DRAW, VAL_DRAW = 1, 2


class Splits(NamedTuple):
    train: Split
    val: Split | None  # held out of the training images by data.val_size; None when it is 0
    test: Split


def load_data(cfg: DataConfig, device: torch.device) -> Splits:
    """The splits as the config asks for them.

    data.val_size training images, chosen by a permutation seeded by data.seed, become the
    validation split. binarize=static draws every split once; dynamic draws the test and
    validation splits once and the training images anew each time they are used (in the training
    loop), so evaluation numbers compare between runs. The draws are seeded by data.seed.
    """
    train, test = load_dataset(cfg.root, cfg.download, device, cfg.dataset)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise UserError(f"data.val_size={cfg.val_size} leaves no training images: the training split "
                            f"has {len(train)}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        val, train = train.subset(order[:cfg.val_size].sort().values), train.subset(order[cfg.val_size:].sort().values)
    if cfg.binarize == "none":
        return Splits(train, val, test)
    return Splits(train.binarized(cfg.seed + TRAIN_DRAW) if cfg.binarize == "static" else train,
                  val.binarized(cfg.seed + VAL_DRAW) if val is not None else None, test.binarized(cfg.seed))
