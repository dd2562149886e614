"""The default config on the genuine MNIST files (../shared/data), when they are present."""
import pytest
from conftest import REPO, SHARED_DATA

from vae.config.load import load_config
from vae.train.loop import train

TRAIN_IMAGES = SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not TRAIN_IMAGES.is_file(), reason=f"genuine MNIST not found in {SHARED_DATA}")]


def test_default_config_reaches_106_nats_in_10_epochs(tmp_path):
    cfg = load_config(REPO / "configs" / "mnist.yaml",
                      [f"data.root={SHARED_DATA}", f"output.dir={tmp_path / 'run'}", "train.device=cpu"])
    result = train(cfg)
    rows = result.rows
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    assert rows[0]["test_loss"] < 135  # the classic example's first epoch: about 127
    assert rows[-1]["test_loss"] <= 106.0  # the classic example: about 105.5
    assert 15 < rows[-1]["test_kl"] < 35  # a healthy rate for a 20-d latent, no collapse
    assert (tmp_path / "run" / "images" / "digit2_epoch010.png").is_file()
