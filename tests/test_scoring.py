"""evaluate.py --against: new data scored against a run's reference split; what it writes, what it reads (splits,
held-out classes, other datasets, your own images, transforms), data.classes, the API, and its refusals."""
import json

import numpy as np
import pytest
import torch
from conftest import make_mnist
from PIL import Image
from test_malformed import assert_one_clear_line, cli

from vae import UserError, load
from vae.commands.evaluate import main
from vae.config.schema import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig, VizConfig
from vae.data.load import load_data
from vae.novelty.against import score_against
from vae.novelty.sources import new_data
from vae.train.loop import train

FAST = ["score.iwae_samples=8", "score.regret_steps=3", "score.samples=2", "score.permutations=50",
        "score.bootstrap=50"]
SCORES = ["nll", "rate", "complexity", "typicality", "regret", "kl_to_reference"]


def run_cfg(root, out, digit=2, **data) -> Config:
    return Config(data=DataConfig(root=str(root), download=False, **data), viz=VizConfig(digit=digit),
                  model=ModelConfig(hidden_dims=(16,), latent_dim=3),
                  train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cpu"),
                  output=OutputConfig(dir=str(out)))


@pytest.fixture(scope="module")
def nine(tmp_path_factory, mnist_root):
    """A run trained on binarized images of the classes 0..8 of the synthetic digits (9 held out), with a validation
    split."""
    return train(run_cfg(mnist_root, tmp_path_factory.mktemp("nine") / "run", classes=tuple(range(9)),
                         val_size=100, binarize="static")).run_dir


@pytest.fixture(scope="module")
def scored(nine):
    return nine, score_against(nine, "heldout", overrides=FAST)


def test_data_classes_trains_and_tests_on_those_classes_only(mnist_root):
    cfg = run_cfg(mnist_root, "unused", digit=5, classes=("3", 5), val_size=20)
    assert cfg.data.classes == (3, 5)  # names resolved to indices once
    splits = load_data(cfg.data, torch.device("cpu"))
    for split in splits:
        assert set(split.labels.tolist()) == {3, 5}
    assert len(splits.train) + len(splits.val) == 128  # 64 of each class among 640 training images
    with pytest.raises(UserError, match="viz.digit must be one of the classes trained on"):
        Config(data=DataConfig(classes=(0, 1)))  # viz.digit is 2 by default
    with pytest.raises(UserError, match="data.classes must be a class index 0..9"):
        Config(data=DataConfig(classes=(2, 10)))


def test_heldout_scores_are_written_for_every_image_of_both_sides(scored):
    run, m = scored
    out = run / "scores" / "heldout"
    assert {p.name for p in out.iterdir()} >= {"scores.csv", "scores.npz", "metrics.json", "scores.html",
                                               "histograms.png", "roc.png", "typical.png"}
    assert json.loads((out / "metrics.json").read_text())["summary"] == m["summary"]
    assert m["reference"]["classes"] == [str(d) for d in range(9)] and m["new"]["images"] == 20  # the test 9s
    arrays = np.load(out / "scores.npz")
    side, label = arrays["side"], arrays["label"]
    assert (side == 1).sum() == 20 and (side == 0).sum() == 180
    assert (label[side == 1] == 9).all() and (label[side == 0] != 9).all()
    csv = np.loadtxt(out / "scores.csv", delimiter=",", skiprows=1)
    assert (out / "scores.csv").read_text().splitlines()[0] == "side,index,label," + ",".join(SCORES)
    for i, name in enumerate(SCORES):
        assert np.allclose(csv[:, 3 + i], arrays[name], atol=1e-5)
        assert m["scores"][name]["new_mean"] == pytest.approx(arrays[name][side == 1].mean())
        assert 0 <= m["scores"][name]["auroc"] <= 1
    assert m["scores"]["regret"]["reference_mean"] >= 0
    kl, test = m["dataset"]["aggregate_kl"], m["dataset"]["test"]
    assert kl["low"] <= kl["kl"] <= kl["high"] and 0 < test["p_value"] <= 1
    assert test["differ"] == (test["p_value"] < 0.05)
    assert m["new"]["name"] in m["summary"] and f"{m['new']['images']} new images" in m["summary"]


def test_the_cli_prints_the_sentence_and_each_scores_auroc(nine, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    main(["--checkpoint", str(nine), "--against", "test", "--transform", "invert", "--out", "inv", *FAST,
          "score.reference=val"])
    lines = capsys.readouterr().out.splitlines()
    metrics = json.loads((tmp_path / "inv" / "metrics.json").read_text())
    assert metrics["new"]["name"] == "test-invert" and metrics["reference"]["split"] == "val"
    assert lines[0] == metrics["summary"] and lines[-1].startswith("wrote inv/scores.html")
    for name, line in zip(SCORES, lines[1:7]):
        assert line.split()[0] == name and f"AUROC {metrics['scores'][name]['auroc']:.3f}" in line
        assert metrics["scores"][name]["auroc"] > 0.9  # the sign: inverted digits score higher on every score


def test_transforms_are_what_they_say(mnist_root):
    cfg = run_cfg(mnist_root, "unused")
    test = load_data(cfg.data, torch.device("cpu")).test.images
    shape, cpu = (1, 28, 28), torch.device("cpu")
    assert torch.equal(new_data(cfg, "test", "hflip", shape, cpu).images, test.flip(-1))
    assert torch.equal(new_data(cfg, "test", "vflip", shape, cpu).images, test.flip(-2))
    assert torch.equal(new_data(cfg, "test", "rot90", shape, cpu).images, test.rot90(1, (-2, -1)))
    assert torch.equal(new_data(cfg, "test", "invert", shape, cpu).images, 255 - test)
    constant = new_data(cfg, "test", "constant", shape, cpu).images.flatten(1).int()
    assert (constant.max(1).values == constant.min(1).values).all() and constant[:, 0].unique().numel() > 20
    noise = new_data(cfg, "test", "noise", shape, cpu).images.float()
    assert noise.mean().item() == pytest.approx(127.5, abs=3) and noise.std().item() == pytest.approx(73.9, abs=3)


def test_binarized_runs_score_binarized_new_images(mnist_root, tmp_path):
    cfg = run_cfg(mnist_root, tmp_path / "b", binarize="static")
    images = new_data(cfg, "test", "rot90", (1, 28, 28), torch.device("cpu")).images
    assert set(images.unique().tolist()) <= {0, 255}


def test_own_images_and_another_dataset_are_scored(nine, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    m = score_against(nine, str(folder), overrides=FAST, out=tmp_path / "out")
    assert m["new"]["images"] == 6 and m["new"]["name"] == "mine"
    both = make_mnist(make_mnist(tmp_path / "root"), n_train=20, n_test=30, folder="FashionMNIST")
    m = score_against(nine, "fashion_mnist", overrides=[*FAST, f"data.root={both}"], out=tmp_path / "f")
    assert m["new"]["images"] == 30


@pytest.mark.parametrize("args, expected", [
    (["--against", "test"], "is the reference itself"),
    (["--against", "nowhere"], "not a split (test, val, train), heldout"),
    (["--against", "test", "--transform", "blur"], "--transform blur: not one of hflip"),
    (["--transform", "hflip"], "--transform transforms the data of --against"),
    (["--against", "heldout", "score.reference=val", "data.val_size=0"], "score.reference needs data.val_size > 0"),
    (["--against", "heldout", "score.scores=[nll,bogus]"], "score.scores must name each of"),
    (["--against", "heldout", "data.binarize=none"], "data.binarize"),
])
def test_bad_scoring_input_is_one_clear_line(nine, monkeypatch, capsys, args, expected):
    assert_one_clear_line(*cli("evaluate", ["--checkpoint", nine, *args], monkeypatch, capsys), expected)


def test_data_of_another_shape_an_empty_folder_and_a_run_without_held_out_classes_are_refused(
        nine, evaluated, tmp_path, monkeypatch, capsys):
    np.savez(tmp_path / "big.npz", x=np.zeros((4, 32, 32), dtype=np.uint8))
    (tmp_path / "empty").mkdir()
    cases = [([nine, "--against", tmp_path / "big.npz"], "are 32x32 images of 1 channel(s), the model's are 28x28"),
             ([nine, "--against", tmp_path / "empty"], "holds no images"),
             ([evaluated[4][0], "--against", "heldout"], "needs a run trained on some classes only")]
    for args, expected in cases:
        assert_one_clear_line(*cli("evaluate", ["--checkpoint", *args], monkeypatch, capsys), expected)


def test_a_score_the_model_does_not_define_is_refused_and_otherwise_left_out(mnist_root, tmp_path, monkeypatch,
                                                                             capsys, evaluated):
    assert_one_clear_line(*cli("evaluate", ["--checkpoint", evaluated[4][0], "--against", "test", "--transform",
                                            "hflip", "score.scores=[complexity]"], monkeypatch, capsys),
                          "does not define (a Bernoulli likelihood of grey levels: its NLL is a cross-entropy")
    grey = score_against(evaluated[4][0], "test", "hflip", FAST, out=tmp_path / "grey")
    assert "complexity" not in grey["scores"] and "complexity" in grey["not_defined"]
    run = train(Config(data=DataConfig(root=str(mnist_root), download=False, binarize="static"),
                       model=ModelConfig(hidden_dims=(16,), latent_dim=3, posterior="flow", flow_hidden=8),
                       train=TrainConfig(epochs=1, device="cpu"),
                       output=OutputConfig(dir=str(tmp_path / "flow")))).run_dir
    capsys.readouterr()  # training's own lines
    assert_one_clear_line(*cli("evaluate", ["--checkpoint", run, "--against", "test", "--transform", "hflip",
                                            "score.scores=[nll,regret]"], monkeypatch, capsys),
                          "score.scores names regret, which this model does not define (the flow posterior")
    m = score_against(run, "test", "hflip", FAST)
    assert list(m["scores"]) == ["nll", "rate", "complexity", "typicality"]
    assert set(m["not_defined"]) == {"regret", "kl_to_reference"}
    assert m["dataset"]["aggregate_kl"] is None and m["dataset"]["test"] is not None


def test_the_api_scores_images_and_compares_two_datasets(nine):
    model = load(nine, device="cpu")
    cfg = model.config
    splits = load_data(cfg.data, torch.device("cpu"))
    reference, new = splits.test.images, 255 - splits.test.images[:30]
    scores = model.score(new[:5], reference=reference)
    assert list(scores) == SCORES and all(s.shape == (5,) and s.dtype == torch.float64 for s in scores.values())
    assert list(model.score(new[:5])) == ["nll", "rate", "complexity", "regret"]  # the others need a reference
    with pytest.raises(UserError, match="typicality and kl_to_reference need reference images"):
        model.score(new[:5], scores=("typicality", "kl_to_reference"))
    reference_nll = model.score(reference, scores=("nll",))["nll"]
    assert torch.allclose(scores["typicality"], (scores["nll"] - reference_nll.mean()).abs())
    same = model.score(new[:5], reference=reference, scores=("nll",))["nll"]
    assert torch.allclose(same, scores["nll"])  # seeded by eval.seed: the same numbers each call
    with pytest.raises(UserError, match="reference images: at least 2 are needed, got 1"):
        model.compare(reference[:1], new)
    result = model.compare(reference, new)
    assert set(result["scores"]) == set(SCORES) and result["new_scores"]["nll"].shape == (30,)
    assert result["dataset"]["test"]["p_value"] < 0.05  # inverted images differ


def test_a_link_where_the_scores_go_and_too_little_memory_are_refused_before_any_work(nine, tmp_path, monkeypatch,
                                                                                      capsys):
    import vae.novelty.against
    (tmp_path / "elsewhere").mkdir()
    link = nine / "scores" / "test-noise"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(tmp_path / "elsewhere")
    try:
        assert_one_clear_line(*cli("evaluate", ["--checkpoint", nine, "--against", "test", "--transform", "noise"],
                                   monkeypatch, capsys), "is a symbolic link")
    finally:
        link.unlink()
    monkeypatch.setattr(vae.novelty.against, "available_bytes", lambda device: 2**20)
    assert_one_clear_line(*cli("evaluate", ["--checkpoint", nine, "--against", "test", "--transform", "noise"],
                               monkeypatch, capsys), "scoring needs about")
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not (nine / "scores" / "test-noise").exists()
