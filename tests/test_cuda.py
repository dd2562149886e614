"""The CUDA path: the step replayed as a CUDA graph follows the eager step (skipped without a GPU)."""
import pytest
import torch
from conftest import with_, without_timing

from vae.run.checkpoint import load_checkpoint
from vae.train.autograd_step import GraphedStep
from vae.train.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_cfg(tiny_cfg):
    # 640 examples in batches of 96: six full batches (graphed) and a short one (eager) per epoch;
    # dynamic binarization, KL warm-up, clipping and a schedule exercise every input of the graph.
    return with_(tiny_cfg, data={"binarize": "dynamic"}, loss={"kl_warmup_epochs": 2},
                 train={"device": "cuda", "epochs": 3, "batch_size": 96, "grad_clip": 50.0,
                        "lr_schedule": "cosine"})


def weights(run):
    return load_checkpoint(run.run_dir / "checkpoints" / "last.pt")[0]["model"]


@pytest.mark.parametrize("option", [{}, {"precision": "bf16"}, {"compile": True}])
def test_graphed_training_follows_the_eager_run(cuda_cfg, tmp_path, monkeypatch, option):
    captures = []
    capture = GraphedStep._capture
    monkeypatch.setattr(GraphedStep, "_capture", lambda self: captures.append(1) or capture(self))
    eager = train(with_(cuda_cfg, train={"cuda_graph": False, **option}, output={"dir": str(tmp_path / "eager")}))
    assert not captures
    graphed = train(with_(cuda_cfg, train=option))
    assert len(captures) == 3  # after the warm-up steps, then at each epoch's new learning rate
    for a, b in zip(eager.rows, graphed.rows):
        for key in ("train_loss", "train_kl", "test_loss", "test_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    for key, value in weights(eager).items():
        torch.testing.assert_close(weights(graphed)[key], value, rtol=1e-5, atol=1e-6)


def test_a_resumed_graphed_run_continues_where_it_stopped(cuda_cfg, tmp_path):
    cfg = with_(cuda_cfg, train={"lr_schedule": "constant"})
    whole = train(cfg)
    split = with_(cfg, output={"dir": str(tmp_path / "split")})
    first = train(with_(split, train={"epochs": 2}))
    resumed = train(split, resume=first.run_dir)  # its epoch 3 starts with the eager warm-up steps again
    assert [r["epoch"] for r in resumed.rows] == [1, 2, 3]
    assert resumed.rows[-1]["test_loss"] == pytest.approx(whole.rows[-1]["test_loss"], rel=1e-5)
    for key, value in weights(whole).items():
        torch.testing.assert_close(weights(resumed)[key], value, rtol=1e-5, atol=1e-6)


def test_deterministic_mode_makes_two_cuda_runs_bitwise_equal(cuda_cfg, tmp_path):
    cfg = with_(cuda_cfg, train={"deterministic": True, "cuda_graph": False})
    a = train(cfg)
    b = train(with_(cfg, output={"dir": str(tmp_path / "b")}))
    assert without_timing(a.rows) == without_timing(b.rows)
    for key, value in weights(a).items():
        assert torch.equal(weights(b)[key], value), key
