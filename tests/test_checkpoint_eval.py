"""evaluate.py's analysis end to end on a small trained model: numbers, pictures, report."""
import base64
import io
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import ImageCollector, make_mnist
from matplotlib.image import imread

from vae.config.load import load_config
from vae.config.schema import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
from vae.data.load import load_data
from vae.evaluate.analyze import evaluate_checkpoint
from vae.model.vae import build_model
from vae.run.checkpoint import load_checkpoint
from vae.train.loop import train


@torch.no_grad()
def independent_evaluation(checkpoint, k=64, replicates=8, seed=2024):
    """The numbers of metrics.json recomputed from the checkpoint's model with torch.distributions,
    a hand-written Bernoulli log-likelihood and a random stream of their own, each with the standard
    error of the single-run estimate that evaluate.py reports (None where that is exact)."""
    from torch.distributions import Independent, Normal, kl_divergence

    state, cfg = load_checkpoint(checkpoint)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.eval()
    images = load_data(cfg.data, torch.device("cpu")).test.images
    x = images.reshape(len(images), -1).float() / 255  # soft targets: data.binarize=none
    n = len(x)
    mu, logvar = model.encoder(x).chunk(2, dim=-1)
    q_dims = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    q, prior = Independent(q_dims, 1), Independent(Normal(torch.zeros_like(q_dims.mean), 1.0), 1)
    mean_variance = mu.double().var(0)

    log_lik, iwae, elbo = [], [], []  # (replicates, k, N), (replicates, N), (replicates, N)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(replicates):
            z = q.sample((k,))  # (k, N, L)
            logits = model.decode(z.float())
            # log Bernoulli(x | sigmoid(l)) = x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l)
            ll = (x * logits - F.softplus(logits)).sum(-1).double()
            log_w = ll + prior.log_prob(z) - q.log_prob(z)
            log_lik.append(ll)
            iwae.append(torch.logsumexp(log_w, 0) - math.log(k))
            elbo.append(log_w.mean(0))
    log_lik, nll, neg_elbo = torch.stack(log_lik), -torch.stack(iwae), -torch.stack(elbo)

    def per_run(estimates):  # (replicates, N) of one k-sample estimator -> (mean of all, SE of one run)
        return estimates.mean().item(), (estimates.var(0).sum().sqrt() / n).item()

    distortion = -log_lik.mean().item()
    # evaluate.py takes one z per image: its mean over images has variance sum_i Var_q[log p(x_i|z)] / N^2
    one_z_se = (log_lik.reshape(-1, n).var(0).sum().sqrt() / n).item()
    return {
        "rate": (kl_divergence(q, prior).mean().item(), None),
        "kl_per_dim": (kl_divergence(q_dims, Normal(0.0, 1.0)).mean(0).tolist(), None),
        "distortion": (distortion, one_z_se),
        "nll_iwae": per_run(nll), "negative_elbo_k_samples": per_run(neg_elbo),
        "inference_gap": per_run(neg_elbo - nll),
        "posterior_mean_variance_per_dim": (mean_variance.tolist(), None),
        "active_units": (int((mean_variance > 0.01).sum()), None),
        "samples": replicates * k, "replicates": replicates,
    }


def test_metrics_json_agrees_with_an_independent_evaluation_of_the_checkpoint(evaluated):
    """metrics.json's ELBO split, IWAE bound, inference gap and active units against the same
    quantities computed here from the checkpoint's model; Monte Carlo ones within 4 standard errors
    of the difference between evaluate.py's single run and this evaluation's longer one."""
    run, m = evaluated[4]
    assert json.loads((run / "eval" / "metrics.json").read_text()) == m
    assert m["examples"] == 200 and m["protocol"]["iwae_samples"] == 64
    ref = independent_evaluation(run / "checkpoints" / "best.pt", k=m["protocol"]["iwae_samples"])
    reps = ref["replicates"]

    def within(name, value, reference, se_one_run, averaged_over):
        tol = 4 * se_one_run * math.sqrt(1 + 1 / averaged_over)  # this run vs the mean of `averaged_over`
        assert abs(value - reference) < tol, (name, value, reference, tol)

    # analytic KL(q(z|x) || N(0, I)): float32 encoder, float64 KL; only rounding separates them
    rate = ref["rate"][0]
    assert m["rate"] == pytest.approx(rate, rel=1e-5)
    assert m["kl_per_dim"] == pytest.approx(ref["kl_per_dim"][0], rel=1e-5, abs=1e-7)
    assert len(m["kl_per_dim"]) == 4 and sum(m["kl_per_dim"]) == pytest.approx(m["rate"], rel=1e-6)
    # E_q[-log p(x|z)]: one z per image there, 512 here
    distortion, one_z_se = ref["distortion"]
    within("distortion", m["distortion"], distortion, one_z_se, ref["samples"])
    within("negative_elbo", m["negative_elbo"], distortion + rate, one_z_se, ref["samples"])
    nats_to_bits_per_dim = math.log2(math.e) / 784
    within("negative_elbo_bits_per_dim", m["negative_elbo_bits_per_dim"], (distortion + rate) * nats_to_bits_per_dim,
           one_z_se * nats_to_bits_per_dim, ref["samples"])
    # IWAE-64 and the 64-sample ELBO: one run there, the mean of 8 independent ones here
    for name in ("nll_iwae", "negative_elbo_k_samples", "inference_gap"):
        within(name, m[name], *ref[name], reps)
    within("nll_iwae_bits_per_dim", m["nll_iwae_bits_per_dim"], ref["nll_iwae"][0] * nats_to_bits_per_dim,
           ref["nll_iwae"][1] * nats_to_bits_per_dim, reps)
    assert ref["nll_iwae"][0] < ref["negative_elbo_k_samples"][0]  # IWAE is the tighter bound
    assert m["nll_iwae"] < m["negative_elbo_k_samples"] and m["inference_gap"] > 0
    assert abs(m["negative_elbo_k_samples"] - m["negative_elbo"]) < 0.05 * m["negative_elbo"]
    # Var over the test images of each dim's encoder mean, and how many exceed 0.01
    assert m["posterior_mean_variance_per_dim"] == pytest.approx(ref["posterior_mean_variance_per_dim"][0], rel=1e-5)
    assert m["active_units"] == ref["active_units"][0]
    rs = m["rate_split"]
    assert rs["mutual_information"] <= rs["mutual_information_bound"] + 1e-6
    assert rs["sum"] == pytest.approx(rs["average_kl"], abs=1.0)  # Monte Carlo vs analytic, 200 images
    assert set(m["seconds"]) == {"encode", "iwae", "aggregate_posterior", "pictures", "total"}


def test_evaluation_is_repeatable_with_its_seed(evaluated, tmp_path):
    run, m = evaluated[4]
    run = shutil.copytree(run, tmp_path / "run")  # another seed's eval/ must not replace the one other tests read
    again = evaluate_checkpoint(run / "checkpoints" / "best.pt", ["eval.iwae_samples=64"])
    assert again["nll_iwae"] == m["nll_iwae"] and again["rate_split"] == m["rate_split"]
    other = evaluate_checkpoint(run / "checkpoints" / "best.pt", ["eval.iwae_samples=64", "eval.seed=5"])
    assert other["nll_iwae"] != m["nll_iwae"]


def grey(path):
    return torch.from_numpy(imread(path))[..., :3].mean(-1)


@pytest.mark.parametrize("latent, expected", [
    (4, {"recon.png", "digit2.png", "samples.png", "digits.png", "interpolation.png", "traversal.png",
         "kl_per_dim.png", "latent_scatter.png", "nats_histogram.png", "worst.png", "metrics.json"}),
    (2, {"manifold.png"}),
])
def test_every_picture_is_written_and_not_blank(evaluated, latent, expected):
    run, _ = evaluated[latent]
    names = {p.name for p in (run / "eval").iterdir()}
    assert expected <= names
    for name in {n for n in names if n.endswith(".png")}:
        assert grey(run / "eval" / name).std() > 0.02, name
    # 10 digit rows of 8 originals + 8 reconstructions; a 20 x 20 manifold of 28 px cells.
    if latent == 2:
        assert grey(run / "eval" / "manifold.png").shape == (20 * 30 + 2, 20 * 30 + 2)
    else:
        assert grey(run / "eval" / "samples.png").shape == (8 * 30 + 2, 8 * 30 + 2)


def test_report_is_self_contained_and_every_image_decodes(evaluated):
    run, m = evaluated[2]
    text = (run / "report.html").read_text()
    parser = ImageCollector()
    parser.feed(text)
    assert parser.links == []
    assert len(parser.sources) == 12  # loss curves + 11 evaluation pictures (with the 2-D manifold)
    for src in parser.sources:
        prefix, data = src.split(",", 1)
        assert prefix == "data:image/png;base64"
        assert imread(io.BytesIO(base64.b64decode(data)), format="png").shape[0] > 50
    assert f"{m['nll_iwae']:.3f}" in text and "latent_dim: 2" in text
    assert 'width="484"' in text  # 242-px pixel grids are shown twice as large


def test_evaluate_measures_the_validation_split_on_request(tmp_path, mnist_root):
    cfg = Config(data=DataConfig(root=str(mnist_root), download=False, val_size=100),
                 model=ModelConfig(hidden_dims=(32,), latent_dim=2),
                 train=TrainConfig(epochs=1, batch_size=64, seed=1, device="cpu"),
                 output=OutputConfig(dir=str(tmp_path / "run")))
    result = train(cfg)
    val = evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=8", "eval.split=val"])
    test = evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=8"])
    assert (val["split"], val["examples"], val["protocol"]["val_size"]) == ("val", 100, 100)
    assert test["examples"] == 200
    # one z per image, so not the training loop's number to the last digit, but close to it
    assert val["negative_elbo"] == pytest.approx(result.rows[-1]["val_loss"], rel=0.05)


def test_evaluate_a_two_layer_model(tmp_path, mnist_root):
    cfg = Config(data=DataConfig(root=str(mnist_root), download=False),
                 model=ModelConfig(hidden_dims=(32,), latent_dim=2, latent2_dim=2, hidden2_dims=(8,)),
                 train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=1, device="cpu"),
                 output=OutputConfig(dir=str(tmp_path / "run")))
    run = train(cfg).run_dir
    m = evaluate_checkpoint(run, ["eval.iwae_samples=64"])
    assert m["rate_split"] is None  # not defined against z1's prior p(z1|z2)
    assert len(m["rate_per_layer"]) == 2 and m["rate_per_layer"][1] > 0  # z2's: an analytic KL
    assert 0 <= m["active_units_z2"] <= 2 and "(z2)" in (run / "report.html").read_text()
    assert len(m["kl_per_dim_z2"]) == 2 and not (run / "eval" / "manifold.png").exists()  # z1's prior is not N(0, I)
    assert len(m["kl_per_dim"]) == 2  # z1, the layer next to x
    assert m["nll_iwae"] <= m["negative_elbo_k_samples"] + 1e-9  # IWAE-64 is the tighter bound
    page = (run / "report.html").read_text()
    assert "not split: two stochastic layers: z1&#x27;s prior p(z1|z2)" in page  # HTML-escaped
    assert (run / "eval" / "samples.png").is_file()


def test_a_fashion_mnist_run_names_its_classes(tmp_path):
    make_mnist(tmp_path / "data", n_train=100, n_test=40, folder="FashionMNIST")
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "data.dataset=fashion_mnist", "data.download=false",
                             "viz.digit=trouser", "model.hidden_dims=[16]", "model.latent_dim=3", "train.epochs=1",
                             "train.device=cpu", f"output.dir={tmp_path / 'run'}"])
    run = train(cfg).run_dir
    assert (run / "images" / "digit1_epoch001.png").is_file()  # viz.digit is stored as the class's index
    evaluate_checkpoint(run, ["eval.iwae_samples=4"])
    report = (run / "report.html").read_text()
    assert "Reconstructions of the class Trouser" in report and (run / "eval" / "digit1.png").is_file()
    explorer = json.loads((run / "eval" / "explorer.json").read_text())
    assert explorer["class_names"][9] == "Ankle boot" and explorer["examples"][explorer["start"]]["label"] == 1
