import sys

import pytest
from test_training import with_

from vae.errors import UserError
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
