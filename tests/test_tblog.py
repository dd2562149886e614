import math
import re
import sys

import numpy as np
import pytest
import torch
from conftest import digit_split
from PIL import Image
from test_training import with_

from vae.data.split import Split
from vae.errors import UserError
from vae.evaluate.analyze import evaluate_checkpoint
from vae.evaluate.tensorboard import projected
from vae.train.loop import train


def test_missing_tensorboard_is_one_clear_error_before_anything_is_written(tiny_cfg, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(UserError, match="needs the tensorboard package: pip install tensorboard"):
        train(with_(tiny_cfg, logging={"tensorboard": True}))
    assert not (tmp_path / "run").exists()


def test_scalars_and_image_grids_reach_tensorboard(tiny_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    result = train(with_(tiny_cfg, logging={"tensorboard": True}))
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    test_loss = [e.value for e in events.Scalars("test/loss")]
    assert test_loss == pytest.approx([r["test_loss"] for r in result.rows])
    assert [e.step for e in events.Scalars("test/active_units")] == [1, 2]
    assert {"recon", "digit2", "samples"} <= set(events.Tags()["images"])
    assert events.Images("samples")[-1].width == 242


def test_evaluate_adds_its_numbers_and_the_latents_projector_to_the_run_s_log(tiny_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    result = train(with_(tiny_cfg, logging={"tensorboard": True}))
    metrics = evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=4"])
    log = result.run_dir / "tensorboard"
    events = EventAccumulator(str(log)).Reload()
    nll = events.Scalars("eval_test/nll_iwae")
    assert [(e.step, e.value) for e in nll] == [(2, pytest.approx(metrics["nll_iwae"]))]
    assert events.Scalars("eval_test/active_units")[0].value == metrics["active_units"]
    assert [e.step for e in events.Scalars("test/loss")] == [1, 2]  # training's own scalars kept
    config = (log / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "latents_test:00002"' in config and "sprite" in config
    folder = log / "00002" / "latents_test"
    latents = np.load(result.run_dir / "eval" / "latents.npz")
    codes = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    assert codes.shape == latents["mu"].shape and np.allclose(codes, latents["mu"], atol=1e-6)
    names = (folder / "metadata.tsv").read_text().split()
    assert names == [str(y) for y in latents["label"]]
    assert Image.open(folder / "sprite.png").size == (28 * math.ceil(math.sqrt(len(names))),) * 2

    evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=4"])  # the same epoch again: replaced, not added
    train(with_(tiny_cfg, train={"epochs": 3}, logging={"tensorboard": True}), resume=result.run_dir)
    evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=4"])  # a later checkpoint: beside the first
    config = (log / "projector_config.pbtxt").read_text()
    assert re.findall(r'tensor_name: "(.*)"', config) == ["latents_test:00002", "latents_test:00003"]


def test_evaluating_a_tensorboard_run_without_the_package_is_refused_before_any_work(tiny_cfg, monkeypatch):
    run = train(with_(tiny_cfg, logging={"tensorboard": True})).run_dir
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(UserError, match="needs the tensorboard package"):
        evaluate_checkpoint(run, ["eval.iwae_samples=4"])
    assert not (run / "eval").exists()
    assert evaluate_checkpoint(run, ["eval.iwae_samples=4", "logging.tensorboard=false"])["nll_iwae"] > 0


def test_the_projector_shows_as_many_images_as_its_sprite_holds():
    assert projected(digit_split(300, seed=0)) == 300
    big = Split(torch.zeros(100, 1, 2000, 1000, dtype=torch.uint8), torch.zeros(100, dtype=torch.long), ("all",))
    assert projected(big) == 16  # 4 x 4 images of 2000 pixels in 8192
