"""evaluate.py --compare: every cell is the runs' own eval/metrics.json, seeds are aggregated as by hand,
evaluations are cached, and the page is self-contained."""
import base64
import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, ImageCollector
from matplotlib.image import imread

from vae.compare.compare import compare
from vae.compare.page import write_html
from vae.compare.table import reference, write_csv
from vae.config.schema import Config, DataConfig, LossConfig, ModelConfig, OutputConfig, TrainConfig
from vae.errors import UserError
from vae.train.loop import train

K = ["eval.iwae_samples=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_root):
    """Four runs: beta 0.5 and 2, each with seeds 0 and 1, compared once."""
    base = tmp_path_factory.mktemp("compare")
    dirs = []
    for beta in (0.5, 2.0):
        for seed in (0, 1):
            cfg = Config(data=DataConfig(root=str(mnist_root), download=False),
                         model=ModelConfig(hidden_dims=(32,), latent_dim=4), loss=LossConfig(beta=beta),
                         train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=seed, device="cpu"),
                         output=OutputConfig(dir=str(base / f"beta{beta}-seed{seed}")))
            dirs.append(train(cfg).run_dir)
    return dirs, compare(dirs, base / "out", K), base / "out"


def own(run):
    return json.loads((Path(run) / "eval" / "metrics.json").read_text())


def test_every_cell_is_the_runs_own_evaluation(runs):
    dirs, result, out = runs
    assert result["differing_keys"] == ["loss.beta"]
    for row in result["runs"]:
        m = own(row["run"])
        assert m["protocol"]["iwae_samples"] == 16 and m["checkpoint"].endswith("last.pt")
        for key in ("negative_elbo", "distortion", "rate", "nll_iwae", "inference_gap", "active_units"):
            assert row[key] == m[key], key
        assert row["mutual_information"] == m["rate_split"]["mutual_information"]
        assert row["marginal_kl"] == m["rate_split"]["marginal_kl"]
        assert row["epochs"] == 2
    with (out / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [str(d) for d in dirs]
    for r in table:
        assert float(r["nll_iwae"]) == own(r["run"])["nll_iwae"] and r["loss.beta"] in ("0.5", "2.0")
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(result))


def test_runs_that_differ_only_in_the_seed_are_one_group_with_mean_and_sample_std(runs):
    dirs, result, _ = runs
    assert [g["values"] for g in result["groups"]] == [{"loss.beta": 0.5}, {"loss.beta": 2.0}]
    for group, pair in zip(result["groups"], (dirs[:2], dirs[2:])):
        assert group["runs"] == [str(d) for d in pair] and group["seeds"] == [0, 1]
        a, b = (own(d)["nll_iwae"] for d in pair)
        # two values: mean (a + b) / 2, sample standard deviation |a - b| / sqrt(2)
        assert group["nll_iwae"]["mean"] == pytest.approx((a + b) / 2, rel=1e-12)
        assert group["nll_iwae"]["std"] == pytest.approx(abs(a - b) / math.sqrt(2), rel=1e-12)


def test_where_the_nats_moved_is_each_term_against_the_reference_and_sums_to_the_nll(runs):
    dirs, result, out = runs
    assert result["reference"] == 0  # neither beta is the default (1): the first group
    values = {key: [[own(d)[key] if key in own(d) else own(d)["rate_split"][key] for d in pair]
                    for pair in (dirs[:2], dirs[2:])]
              for key in ("nll_iwae", "distortion", "rate", "inference_gap", "negative_elbo",
                          "negative_elbo_k_samples", "mutual_information", "marginal_kl")}
    mean = {key: [sum(pair) / 2 for pair in v] for key, v in values.items()}
    moved = {key: d["mean"] for key, d in result["moved"][1].items()}
    for key, value in moved.items():
        assert value == pytest.approx(mean[key][1] - mean[key][0], abs=1e-9), key
        # the standard error of a difference of two 2-seed means: sqrt(s1^2 / 2 + s0^2 / 2), s = |a - b| / sqrt(2)
        (a0, b0), (a1, b1) = values[key]
        se = math.sqrt((a1 - b1) ** 2 / 4 + (a0 - b0) ** 2 / 4)
        assert result["moved"][1][key]["se"] == pytest.approx(se, rel=1e-9), key
    assert moved["rate"] == pytest.approx(moved["mutual_information"] + moved["marginal_kl"], abs=0.05)
    # what the terms leave of NLL is the change between the two ELBO estimates (1 and k samples)
    elbo_noise = (mean["negative_elbo_k_samples"][1] - mean["negative_elbo"][1]) \
        - (mean["negative_elbo_k_samples"][0] - mean["negative_elbo"][0])
    terms = moved["distortion"] + moved["rate"] - moved["inference_gap"]
    assert moved["nll_iwae"] - terms == pytest.approx(elbo_noise, abs=1e-9)
    assert {key: d["mean"] for key, d in result["moved"][0].items()} == {key: 0.0 for key in moved}
    page = (out / "comparison.html").read_text()
    assert "Where the nats moved, against beta=0.5" in page and f"{moved['nll_iwae']:+.3f} ± " in page


def test_the_reference_is_the_group_at_the_defaults():
    found = [{"values": {"model.prior": "mog", "model.posterior": "gaussian"}},
             {"values": {"model.prior": "normal", "model.posterior": "flow"}},
             {"values": {"model.prior": "normal", "model.posterior": "gaussian"}}]
    assert reference(found, ["model.prior", "model.posterior"]) == 2
    assert reference(found[:2], ["model.prior", "model.posterior"]) == 0


def test_the_csv_and_the_page_show_config_values_plain_not_as_json(runs, tmp_path):
    _, result, _ = runs
    keys = ["model.prior", "model.hidden_dims", "data.path", "train.deterministic"]
    values = [("normal", [32, 16], None, True), ("mog", [64], "digits.npz", False)]
    rows = [{**row, "config": {**row["config"], **dict(zip(keys, v))}} for row, v in zip(result["runs"], values)]
    write_csv(tmp_path / "comparison.csv", rows, keys)
    with (tmp_path / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [[r[k] for k in keys] for r in table] == [["normal", "[32, 16]", "", "true"],
                                                     ["mog", "[64]", "digits.npz", "false"]]
    assert {r["finished"] for r in table} <= {"true", "false"}
    groups = [{**g, "values": dict(zip(keys, v))} for g, v in zip(result["groups"], values)]
    write_html(tmp_path, {**result, "differing_keys": keys, "groups": groups}, [])
    tables = "".join(re.findall(r"<table>.*?</table>", (tmp_path / "comparison.html").read_text(), re.S))
    assert "<td>normal</td><td>[32, 16]</td><td>unset</td><td>true</td>" in tables
    assert "&quot;" not in tables and "null" not in tables


def test_the_page_is_self_contained_and_every_image_decodes(runs):
    _, result, out = runs
    text = (out / "comparison.html").read_text()
    parser = ImageCollector()
    parser.feed(text)
    assert parser.links == []
    # the rate-distortion plane, the rate split, NLL against beta, and each group's reconstructions and samples
    assert len(parser.sources) == 3 + 2 * 2
    for src in parser.sources:
        prefix, data = src.split(",", 1)
        assert prefix == "data:image/png;base64"
        assert imread(io.BytesIO(base64.b64decode(data)), format="png").shape[0] > 50
    best = min(result["groups"], key=lambda g: g["nll_iwae"]["mean"])
    row = re.search(r'<tr class="best">(.*?)</tr>', text).group(1)
    assert f"{best['nll_iwae']['mean']:.3f} ± {best['nll_iwae']['std']:.3f}" in row


def test_evaluations_are_cached_unless_the_eval_settings_change(runs):
    dirs, _, out = runs
    before = (dirs[0] / "eval" / "metrics.json").stat().st_mtime_ns
    compare(dirs[:1], out / "again", K)
    assert (dirs[0] / "eval" / "metrics.json").stat().st_mtime_ns == before
    compare(dirs[:1], out / "again", ["eval.iwae_samples=8"])
    assert own(dirs[0])["protocol"]["iwae_samples"] == 8


def test_a_folder_that_is_no_run_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="is neither a run directory .* nor a sweep directory"):
        compare([tmp_path], tmp_path / "out")
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--compare", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_an_evaluation_written_before_keys_were_added_still_counts_as_one_of_the_same_config():
    """A metrics.json config without the keys added since (the score section, data.classes) takes their defaults, so
    a comparison does not evaluate every older run again; another value of a key is another config."""
    from vae.compare.compare import same_config
    from vae.config.load import to_dict
    cfg = Config(train=TrainConfig(epochs=3))
    older = to_dict(cfg)
    del older["score"], older["data"]["classes"]
    assert same_config(older, cfg)
    assert not same_config({**older, "train": {**older["train"], "epochs": 4}}, cfg)
    assert not same_config({"train": {"epochs": "x"}}, cfg)  # an unreadable config is no match
