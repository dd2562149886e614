"""Training's TensorBoard log (logging.tensorboard=true): per-epoch scalars and the image grids."""
from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.image import imread

from vae.evaluate.tensorboard import summary_writer_class


class TensorBoardLog:
    def __init__(self, log_dir: Path, first_epoch: int):
        # purge_step drops events at or after the epoch a resumed run redoes, so none appear twice
        self.writer = summary_writer_class()(log_dir=str(log_dir), purge_step=first_epoch)

    def epoch(self, row: dict, pictures: list[Path]) -> None:
        """Scalars of one metrics.csv row (train_loss -> train/loss) and the PNGs drawn this epoch."""
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        for path in pictures:
            image = torch.from_numpy(imread(path))[..., :3]  # (H, W, 3) floats in [0, 1]
            self.writer.add_image(path.stem.rsplit("_epoch", 1)[0], image, row["epoch"], dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
