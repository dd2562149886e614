"""The average of the weights (train.ema_decay): its recursion by hand, what a run evaluates and saves, resume."""
import pytest
import torch
from conftest import assert_same_parameters, on_each_step, with_, without_timing
from torch import nn

from vae import load
from vae.data.load import load_data
from vae.evaluate.analyze import evaluate_checkpoint
from vae.evaluate.heldout import evaluate
from vae.model.vae import build_model
from vae.run.checkpoint import load_checkpoint
from vae.train.averaging import WeightAverage
from vae.train.loop import train


def averaged_by_hand(start: dict, states: list[dict], decay: float) -> dict:
    """a <- d_n a + (1 - d_n) w_(n+1), d_n = min(decay, (1 + n) / (10 + n)), from a = `start`."""
    average = {k: v.double() for k, v in start.items()}
    for n, state in enumerate(states):
        d = min(decay, (1 + n) / (10 + n))
        average = {k: d * average[k] + (1 - d) * state[k].double() for k in average}
    return average


def test_the_average_follows_its_recursion_with_the_warm_up_decay():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.5)
    start, states = {k: v.clone() for k, v in model.state_dict().items()}, []
    for _ in range(40):  # the decay rises from 0.1 by (1 + n) / (10 + n) and holds its cap 0.5 from n = 8
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update()
    expected = averaged_by_hand(start, states, 0.5)
    for k, v in average.model.state_dict().items():
        assert torch.allclose(v.double(), expected[k], atol=1e-6), k
    assert average.updates == 40 and not any(p.requires_grad for p in average.model.parameters())
    assert torch.equal(model.weight, states[-1]["weight"])  # the model itself is left alone


@pytest.fixture
def averaged_cfg(tiny_cfg):
    return with_(tiny_cfg, train={"ema_decay": 0.95})


def test_a_run_averages_every_steps_weights_and_evaluates_saves_and_loads_the_average(
        averaged_cfg, monkeypatch):
    steps = []

    def recording(step, *args):
        step(*args)
        steps.append({k: v.clone() for k, v in step.net.state_dict().items()})
    on_each_step(monkeypatch, recording)
    result = train(averaged_cfg)
    state, _ = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert state["average"]["updates"] == len(steps) == 20  # 640 images in batches of 64, two epochs

    torch.manual_seed(averaged_cfg.train.seed)  # the initial weights, as train() draws them
    start = build_model(averaged_cfg.model).state_dict()
    expected = averaged_by_hand(start, steps, 0.95)
    for k, v in state["average"]["model"].items():
        assert torch.allclose(v.double(), expected[k], atol=1e-5), k
    assert_same_parameters(state["model"], steps[-1])  # the trained weights are kept for resuming

    # The epoch's numbers are the average's, and differ from the last weights'
    splits = load_data(averaged_cfg.data, torch.device("cpu"))
    averaged, last = build_model(averaged_cfg.model), build_model(averaged_cfg.model)
    averaged.load_state_dict(state["average"]["model"])
    last.load_state_dict(state["model"])
    row = result.rows[-1]
    assert evaluate(averaged, splits.test, averaged_cfg.train.seed)["loss"] == pytest.approx(row["test_loss"],
                                                                                             rel=1e-12)
    assert evaluate(last, splits.test, averaged_cfg.train.seed)["loss"] != pytest.approx(row["test_loss"], rel=1e-4)
    # and so are evaluate.py's and the Python API's
    metrics = evaluate_checkpoint(result.run_dir / "checkpoints" / "last.pt", ["eval.iwae_samples=2", "eval.seed=5"])
    assert metrics["negative_elbo"] == pytest.approx(evaluate(averaged, splits.test, 5)["loss"], rel=1e-12)
    assert_same_parameters(load(result.run_dir, device="cpu").module.state_dict(), state["average"]["model"])


def test_a_resumed_average_is_bitwise_the_uninterrupted_one(averaged_cfg, tmp_path):
    straight = train(with_(averaged_cfg, train={"epochs": 4}, output={"dir": str(tmp_path / "straight")}))
    halves = with_(averaged_cfg, output={"dir": str(tmp_path / "halves")})
    train(halves)
    resumed = train(with_(halves, train={"epochs": 4}), resume=tmp_path / "halves")
    assert without_timing(resumed.rows) == without_timing(straight.rows)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b, _ = load_checkpoint(tmp_path / "halves" / "checkpoints" / "last.pt")
    assert a["average"]["updates"] == b["average"]["updates"] == 40
    assert_same_parameters(a["average"]["model"], b["average"]["model"])
