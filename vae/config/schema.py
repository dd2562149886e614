"""The run configuration's keys: typed frozen dataclasses, one section each, every key declared once.

A key's field (`key(...)`) holds its type, default, allowed values, meaning and role. Validation,
the lists of keys that may change on resume or that a comparison leaves out, and docs/config.md
(vae.config.docs) are derived from there. A value a key does not allow is a `UserError` naming it.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vae.errors import UserError

# data.dataset -> the names of its classes 0..9 (those of torchvision's MNIST, FashionMNIST and KMNIST)
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}

# A key's role: what changing it means for a run.
EXPERIMENT = "experiment"  # what is trained: fixed for a run's life (resume refuses a change); compared
DURATION = "duration"  # how long, and in what arithmetic, it trains: may change on resume; compared
SETTING = "setting"  # where it runs, what it draws and measures: may change on resume; not compared
ROLE_TEXT = {EXPERIMENT: "fixed", DURATION: "may change on resume", SETTING: "may change on resume; not compared"}


def key(default: Any, meaning: str, *, choices: tuple = (), within: tuple | None = None, rule: str = "",
        ok: Callable[[Any], bool] | None = None, role: str = EXPERIMENT) -> Any:
    """A config field: its default, its meaning, the values it takes and its role, declared once.

    `choices` lists the values it takes; `within=(low, high)` bounds a number (a float must also be
    finite); `ok` is any other test, `rule` what it demands ("must be ...", also said on a refusal).
    """
    return dataclasses.field(default=default, metadata={"meaning": meaning, "choices": choices, "within": within,
                                                        "rule": rule, "ok": ok, "role": role})


def rule_text(f: dataclasses.Field) -> str:
    """What a field's value must be, as said in an error ('' when any value of its type goes)."""
    m = f.metadata
    if m["rule"]:
        return m["rule"]
    if m["choices"]:
        return f"must be one of {', '.join(map(str, m['choices']))}"
    if m["within"]:
        low, high = m["within"]
        return f"must be a number in [{low:g}, {high:g}]" if f.type in ("float", float) else f"must be in {low}..{high}"
    return ""


def _allowed(f: dataclasses.Field, value: Any) -> bool:
    m = f.metadata
    if m["choices"] and value not in m["choices"]:
        return False
    if m["within"]:
        low, high = m["within"]
        if not (low <= value <= high) or isinstance(value, float) and not math.isfinite(value):
            return False
    return m["ok"] is None or m["ok"](value)


def check_fields(section: Any, name: str) -> None:
    """Refuse a value its field does not allow, naming the key and the rule."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not _allowed(f, value):
            shown = list(value) if isinstance(value, tuple) else value
            raise UserError(f"{name}.{f.name} {rule_text(f)}, got {shown!r}")


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    """A check that involves more than one key."""
    if not ok:
        raise UserError(f"{key} {rule}, got {value!r}")


def _sizes(low: int, high: int, most: int | None = None) -> Callable[[tuple], bool]:
    return lambda v: (most is None or 1 <= len(v) <= most) and all(low <= h <= high for h in v)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = key("mnist", "`mnist`, `fashion_mnist`, `kmnist`: torchvision's 28x28 grey images under "
                       "`data.root` ([more](training.md#data)); `folder`, `npz`: your own, at `data.path` "
                       "([more](training.md#your-own-images))",
                       choices=(*CLASS_NAMES, "folder", "npz"))
    root: str = key("data", "`mnist`, `fashion_mnist`, `kmnist`: the folder holding the dataset's folder "
                    "(`MNIST/raw/`, ...: torchvision's layout)", role=SETTING)
    download: bool = key(True, "let torchvision download `mnist`, `fashion_mnist` or `kmnist` when its files are "
                         "missing", role=SETTING)
    path: str | None = key(None, "`folder`, `npz`: the folder of images or the `.npz` file: the data itself, so "
                           "fixed for a run and compared between runs")
    image_size: int = key(0, "resize every image (its shorter side, antialiased) and centre-crop it to this many "
                          "pixels a side. `0` = as they are, which must then be of one size", within=(0, 4096))
    test_fraction: float = key(0.1, "`folder`, `npz` without a test split of their own: the share of the images held "
                               "out as the test split (a permutation seeded by `data.seed`)",
                               ok=lambda v: 0 < v < 1, rule="must be a number in (0, 1)")
    binarize: str = key("none", "`none`: intensities in [0, 1] are the targets; `dynamic`: training images redrawn as "
                        "Bernoulli(intensity) at each use; `static`: all drawn once "
                        "([more](evaluation.md#binarized-mnist-and-the-literature))",
                        choices=("none", "dynamic", "static"))
    seed: int = key(0, "seeds the binarizations and the choice of validation (and, without a test split, test) "
                    "images, so runs with one `data.seed` share those sets "
                    "([more](evaluation.md#binarized-mnist-and-the-literature))",
                    within=(0, 2**62 - 1), rule="must be in 0..2**62-1")
    val_size: int = key(0, "training images held out as a validation split, measured every epoch (`val_*`): it "
                        "chooses `best.pt` and drives early stopping. `0` = none ([more](training.md#data))",
                        within=(0, 1_000_000))
    classes: tuple[int | str, ...] = key((), "train, validate and test on these classes only (indices or names), "
                                         "leaving the others as new data to score (`--against heldout`). `[]` = every "
                                         "class ([more](scoring.md#what-it-reads))", ok=lambda v: len(set(v)) == len(v),
                                         rule="must name each class once")

    def __post_init__(self):
        check_fields(self, "data")
        _require(self.dataset in CLASS_NAMES or bool(self.path), "data.dataset", self.dataset,
                 "needs data.path (the folder of images, or the .npz file)")


ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "glu")
PRIORS = ("normal", "mog", "vamp")
POSTERIORS = ("gaussian", "flow")
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "logistic")


@dataclass(frozen=True)
class ModelConfig:
    hidden_dims: tuple[int, ...] = key((400,), "`mlp`: the encoder's hidden widths; the decoder mirrors them; "
                                       "`[]` is a linear encoder and decoder",
                                       ok=_sizes(1, 65536), rule="must hold sizes in 1..65536")
    latent_dim: int = key(20, "the size of z (of z1, the layer next to x, with two stochastic layers)",
                          within=(1, 4096))
    activation: str = key("relu", "the nonlinearity between hidden layers (`tanh`: Burda et al.'s networks; `glu`: "
                          "gated linear units h * sigmoid(g) of a layer twice as wide, `mlp` networks only "
                          "([more](training.md#gated-layers)))", choices=ACTIVATIONS)
    arch: str = key("mlp", "`mlp`: fully connected encoder and decoder (`model.hidden_dims`); `conv`: "
                    "convolutional ones with residual blocks (`model.channels`, `model.res_blocks`)",
                    choices=("mlp", "conv"))
    channels: tuple[int, ...] = key((32, 64), "`conv`: the channels of each of 1 to 6 stages, each at half the sides "
                                    "of the one before, so the sides must divide by 2^(stages - 1) "
                                    "([more](training.md#the-convolutional-encoder-and-decoder))",
                                    ok=_sizes(1, 4096, most=6),
                                    rule="must hold 1 to 6 sizes in 1..4096 (one stage per halving of the sides)")
    res_blocks: int = key(1, "`conv`: residual blocks per stage, each x + conv3x3(act(conv3x3(act(x))))",
                          within=(0, 64))
    latent2_dim: int = key(0, "units of a second stochastic layer z2 above z1 (Burda et al.): q(z2|z1), p(z1|z2), "
                           "p(z2) = N(0, I). `0` = one stochastic layer ([more](training.md#two-stochastic-layers))",
                           within=(0, 4096))
    hidden2_dims: tuple[int, ...] = key((50, 50), "with `model.latent2_dim`: the MLP widths of q(z2|z1); p(z1|z2) "
                                        "mirrors them", ok=_sizes(1, 65536), rule="must hold sizes in 1..65536")
    inference: str = key("bottom_up", "with `model.latent2_dim`: `bottom_up`, z1 ~ q(z1|x) then z2 ~ q(z2|z1); "
                         "`top_down`, z2 ~ q(z2|x) then z1 from x and p(z1|z2) (ladder VAE) "
                         "([more](training.md#two-stochastic-layers))", choices=("bottom_up", "top_down"))
    skip: bool = key(False, "with `model.latent2_dim`: the decoder takes z2 beside z1, p(x|z1, z2), a skip "
                     "connection from the top layer to the image; an image's code is then (z1, z2) "
                     "([more](training.md#skip-connections))")
    prior: str = key("normal", "p(z) of the top stochastic layer: `normal`, N(0, I); `mog`, a learned mixture of "
                     "`model.prior_components` Gaussians; `vamp`, the VampPrior "
                     "([more](training.md#which-distributions-the-prior-and-the-posterior))",
                     choices=PRIORS)
    prior_components: int = key(500, "`mog`, `vamp`: the mixture's components K (Tomczak & Welling used 500 "
                                "pseudo-inputs on MNIST)", within=(1, 100_000))
    posterior: str = key("gaussian", "q(z|x): `gaussian`, N(mu, diag(sigma^2)); `flow`, an inverse autoregressive "
                         "flow of `model.flow_steps` steps on it (one stochastic layer) "
                         "([more](training.md#which-distributions-the-prior-and-the-posterior))",
                         choices=POSTERIORS)
    flow_steps: int = key(2, "`flow`: the steps T, each z <- s * z + (1 - s) * m with [m, s] from a MADE of z; "
                          "consecutive steps reverse the order of the dimensions", within=(1, 64))
    flow_hidden: int = key(256, "`flow`: the MADE's hidden units and the size of the context h from the encoder",
                           within=(1, 65536))
    likelihood: str = key("bernoulli", "p(x|z): `bernoulli`, of binary pixels; `continuous_bernoulli`, a density on "
                          "[0, 1]; `logistic`, discretized logistics of 8-bit levels; these two need "
                          "`data.binarize=none` ([more](training.md#the-likelihood-pxz))", choices=LIKELIHOODS)
    likelihood_components: int = key(1, "`logistic`: the logistics mixed in each pixel's distribution", within=(1, 64))
    output_bias_init: str = key("torch", "`pixel_means`: the decoder's last bias starts at the logits of the training "
                                "pixels' means (`mlp`, `bernoulli` only); `torch`: torch's default "
                                "([more](training.md#the-objective))", choices=("torch", "pixel_means"))

    def __post_init__(self):
        check_fields(self, "model")
        _require(self.output_bias_init == "torch" or self.arch == "mlp", "model.output_bias_init",
                 self.output_bias_init,
                 "pixel_means needs model.arch=mlp (the conv decoder ends in a bias per channel, not per pixel)")
        _require(self.output_bias_init == "torch" or self.likelihood == "bernoulli", "model.output_bias_init",
                 self.output_bias_init, "pixel_means sets Bernoulli logits: it needs model.likelihood=bernoulli")
        _require(self.inference == "bottom_up" or self.latent2_dim, "model.inference", self.inference,
                 "top_down needs a second stochastic layer (set model.latent2_dim)")
        _require(self.posterior == "gaussian" or not self.latent2_dim, "model.posterior", self.posterior,
                 "flow is built for one stochastic layer (set model.latent2_dim=0)")
        _require(self.activation != "glu" or (self.arch == "mlp" and self.posterior == "gaussian"), "model.activation",
                 self.activation, "glu gates the MLPs' hidden layers: it needs model.arch=mlp and "
                 "model.posterior=gaussian")
        _require(not self.skip or self.latent2_dim, "model.skip", self.skip,
                 "needs a second stochastic layer to join to the decoder (set model.latent2_dim)")


@dataclass(frozen=True)
class LossConfig:
    beta: float = key(1.0, "the weight of the rate (KL) in the training objective: 1 is the ELBO, else a beta-VAE",
                      within=(0, 1000))
    kl_warmup_epochs: int = key(0, "the KL weight rises linearly, step by step, from 0 to `loss.beta` over this many "
                                "epochs (under the IWAE bound it weights the latent part of each log-weight)",
                                within=(0, 1_000_000))
    free_bits: float = key(0.0, "free bits (Kingma et al. 2016): each latent dimension's rate, as a batch mean (the "
                           "whole batch under torchrun), counts as at least this many nats. `0` = off",
                           within=(0, 100))
    iwae_k: int = key(1, "train on the IWAE bound with k importance samples per example (Burda et al. 2015); 1 is "
                      "the VAE. It takes no beta or free bits", within=(1, 100_000))
    gradient: str = key("standard", "`standard`: autograd's gradient; `dreg`: the doubly reparameterized encoder "
                        "gradient (Tucker et al. 2019), STL at `loss.iwae_k=1`; one stochastic layer, no free bits "
                        "([more](training.md#the-objective))", choices=("standard", "dreg"))

    def __post_init__(self):
        check_fields(self, "loss")
        _require(self.iwae_k == 1 or (self.beta == 1 and not self.free_bits),
                 "loss.iwae_k", self.iwae_k, "> 1 is the IWAE bound, which takes no beta or free bits "
                 "(set loss.iwae_k=1 for those)")
        _require(self.gradient == "standard" or not self.free_bits, "loss.gradient", self.gradient,
                 "dreg takes no free bits (its rate is sampled, not the analytic per-dimension KL)")


LR_SCHEDULES = ("constant", "cosine", "exponential", "burda")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = key(10, "train up to this epoch (a resumed run continues to it)", within=(1, 1_000_000),
                      role=DURATION)
    batch_size: int = key(128, "examples per step; the last batch of an epoch may be smaller", within=(1, 1_000_000))
    lr: float = key(1e-3, "Adam's learning rate (of the first epoch, under a schedule)",
                    ok=lambda v: math.isfinite(v) and 0 < v <= 10, rule="must be a finite number in (0, 10]")
    lr_schedule: str = key("constant", "the learning rate by epoch: `constant`; `cosine` or `exponential` from "
                           "`train.lr` down to `train.lr * train.lr_decay_to`; `burda`, Burda et al.'s stages "
                           "([more](training.md#the-learning-rate-schedule))", choices=LR_SCHEDULES)
    lr_decay_to: float = key(0.1, "`cosine`/`exponential`: the last epoch's learning rate as a fraction of `train.lr`",
                             ok=lambda v: math.isfinite(v) and 0 < v <= 1, rule="must be a number in (0, 1]")
    seed: int = key(0, "seeds the initialization, the batch order, the noise and the fixed sample batch",
                    within=(0, 2**63 - 1), rule="must be in 0..2**63-1")
    device: str = key("auto", "`auto` (CUDA when there is one), `cpu`, `cuda` or `cuda:N`", role=SETTING,
                      ok=lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                      rule="must be auto, cpu, cuda or cuda:N")
    weight_decay: float = key(0.0, "decoupled weight decay (AdamW's) of the networks' weight matrices and kernels, not "
                              "their biases nor the prior's parameters: each step multiplies them by "
                              "`1 - lr * weight_decay`. `0` = off (plain Adam)",
                              ok=lambda v: math.isfinite(v) and v >= 0, rule="must be a finite number >= 0 (0 = off)")
    grad_clip: float = key(0.0, "clip the gradient norm to this before each step. `0` = off",
                           ok=lambda v: math.isfinite(v) and v >= 0, rule="must be a finite number >= 0 (0 = off)")
    checkpoint_every_steps: int = key(0, "also write `last.pt` every N steps inside an epoch (for long epochs). `0` = "
                                      "at epoch ends only", ok=lambda v: v >= 0, role=SETTING,
                                      rule="must be >= 0 (0 = at epoch ends only)")
    deterministic: bool = key(False, "torch's deterministic algorithms (sets `CUBLAS_WORKSPACE_CONFIG` on a GPU)",
                              role=SETTING)
    precision: str = key("fp32", "`fp32`; `bf16`: the training forward pass under bf16 autocast (for GPUs and CPUs "
                         "with bf16 products); `auto`: time the run's step both ways and take the faster "
                         "([more](training.md#precision))",
                         choices=("fp32", "bf16", "auto"), role=DURATION)
    threads: int | str = key("all", "torch's threads on the CPU: `all` this process has, N, or `auto`: time the run's "
                             "step on 1, 2, 4, ... up to `all` threads and take the fastest "
                             "([more](training.md#threads))", role=SETTING,
                             ok=lambda v: v in ("all", "auto") or type(v) is int and v >= 1,
                             rule="must be all, auto or a number of threads >= 1")
    compile: bool | str = key(False, "`torch.compile` the training step: `true`, `false`, or `auto`: time it compiled "
                              "(with the compiling) and not, and compile if that ends the run sooner. Needs a C++ "
                              "compiler ([more](training.md#torchcompile))", role=SETTING,
                              ok=lambda v: v is True or v is False or v == "auto", rule="must be true, false or auto")
    cuda_graph: bool = key(True, "on CUDA in one process: capture a full batch's step as one CUDA graph and replay "
                           "it; ignored on the CPU and under torchrun ([more](training.md#cuda-graphs))", role=SETTING)
    fast_step: bool = key(True, "on the CPU in one process: the MLP VAE's step with its backward written out, where "
                          "the model and objective are ones it writes; `false`: autograd's step "
                          "([more](training.md#the-written-out-cpu-step))", role=SETTING)
    patience: int = key(0, "early stopping: stop once the validation loss has not improved for this many epochs "
                        "(needs `data.val_size`; a run that stopped stays stopped unless it is raised). `0` = never",
                        within=(0, 1_000_000), rule="must be in 0..1000000 (0 = off)", role=DURATION)
    ema_decay: float = key(0.0, "keep an exponential moving average of the weights, its decay rising to this; every "
                           "evaluation uses it. `0` = off ([more](training.md#the-weights-moving-average))",
                           ok=lambda v: 0 <= v < 1, rule="must be a number in [0, 1) (0 = off)")
    budget_minutes: float = key(0.0, "a budget for the run's wall time: stop before an epoch that would not fit; the "
                                "learning-rate schedule follows it. Not with `burda`. `0` = none "
                                "([more](training.md#a-time-budget))",
                                within=(0, 1_000_000), rule="must be a number in [0, 1000000] (0 = no time budget)",
                                role=DURATION)

    def __post_init__(self):
        check_fields(self, "train")
        _require(not self.budget_minutes or self.lr_schedule != "burda", "train.budget_minutes", self.budget_minutes,
                 "cannot time Burda's schedule, whose stages are fixed epoch counts (use cosine or exponential)")


@dataclass(frozen=True)
class VizConfig:
    every: int = key(1, "write the image grids every N epochs (and always after the last)",
                     ok=lambda v: v >= 1, rule="must be >= 1", role=SETTING)
    curves_every: int = key(10, "redraw `images/loss_curves.png` every N epochs (and always after the last): "
                            "a drawing can take a sizeable share of a short epoch",
                            ok=lambda v: v >= 1, rule="must be >= 1", role=SETTING)
    digit: int | str = key(2, "the class of the single-class grid and where the report's decoder starts: its index or "
                           "name (any case), one of `data.classes` when set "
                           "([more](evaluation.md#the-reports-live-decoder))",
                           ok=lambda v: isinstance(v, str) or v >= 0,
                           rule="must be a class index >= 0 or a class name", role=SETTING)

    def __post_init__(self):
        check_fields(self, "viz")


@dataclass(frozen=True)
class EvalConfig:
    split: str = key("test", "the split evaluate.py measures (`val` needs `data.val_size`)",
                     choices=("test", "val", "train"), role=SETTING)
    iwae_samples: int = key(5000, "k, the importance samples per image of the IWAE bound (Burda et al. use 5000)",
                            within=(1, 1_000_000), role=SETTING)
    seed: int = key(0, "seeds every sample evaluate.py draws, so that its numbers repeat", within=(0, 2**63 - 1),
                    rule="must be in 0..2**63-1", role=SETTING)

    def __post_init__(self):
        check_fields(self, "eval")


SCORES = ("nll", "rate", "complexity", "typicality", "regret", "kl_to_reference")


@dataclass(frozen=True)
class ScoreConfig:
    reference: str = key("test", "`evaluate.py --against`: the run's split that new data is measured against (of "
                         "its `data.classes`; `val` needs `data.val_size`)", choices=("test", "val", "train"),
                         role=SETTING)
    scores: tuple[str, ...] = key((), "the per-image scores to compute, of " + ", ".join(f"`{s}`" for s in SCORES)
                                  + " (docs/scoring.md says what each means); `[]` = every one this model defines",
                                  ok=lambda v: all(s in SCORES for s in v) and len(set(v)) == len(v),
                                  rule="must name each of " + ", ".join(SCORES) + " at most once", role=SETTING)
    iwae_samples: int = key(100, "k of the `nll` score's IWAE bound (a ranking needs fewer than `eval.iwae_samples`' "
                            "5000)", within=(1, 1_000_000), role=SETTING)
    samples: int = key(8, "the samples of z per image in the `regret` and `kl_to_reference` scores' Monte Carlo "
                       "estimates", within=(1, 10_000), role=SETTING)
    compressor: str = key("zlib", "`complexity`: the lossless compressor whose code length is taken from `nll`: "
                          "`zlib` (chosen on validation data), `bz2` or `png` "
                          "([more](scoring.md#image-by-image-the-scores))", choices=("zlib", "bz2", "png"),
                          role=SETTING)
    regret_steps: int = key(20, "`regret`: Adam steps that refit each image's q(z|x) to it alone", within=(1, 100_000),
                            role=SETTING)
    regret_lr: float = key(0.05, "`regret`: the learning rate of that refit", ok=lambda v: math.isfinite(v) and v > 0,
                           rule="must be a finite number > 0", role=SETTING)
    alpha: float = key(0.05, "the two-sample test's level: the data differ when its p-value is below it",
                       ok=lambda v: 0 < v < 1, rule="must be a number in (0, 1)", role=SETTING)
    permutations: int = key(1000, "the two-sample test's random permutations (its smallest p-value is "
                            "1 / (permutations + 1))", within=(10, 1_000_000), role=SETTING)
    bootstrap: int = key(1000, "bootstrap resamples of the KL between the aggregate posteriors, for its 95% "
                         "interval", within=(10, 1_000_000), role=SETTING)

    def __post_init__(self):
        check_fields(self, "score")


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = key(False, "also log the metrics and image grids to `<run>/tensorboard/`, and evaluate.py's "
                            "numbers and latents (needs `pip install tensorboard`)", role=SETTING)


@dataclass(frozen=True)
class OutputConfig:
    dir: str | None = key(None, "the run directory; unset, `outputs/<config file name>`", role=SETTING)


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    viz: VizConfig = VizConfig()
    eval: EvalConfig = EvalConfig()
    score: ScoreConfig = ScoreConfig()
    logging: LoggingConfig = LoggingConfig()
    output: OutputConfig = OutputConfig()

    def __post_init__(self):
        # Early stopping on the test set would leak it into training: the test number would be chosen.
        _require(not self.train.patience or self.data.val_size > 0, "train.patience", self.train.patience,
                 "needs data.val_size > 0 (a validation split to watch)")
        _require(self.eval.split != "val" or self.data.val_size > 0, "eval.split", self.eval.split,
                 "needs data.val_size > 0 (the run has no validation split)")
        _require(self.score.reference != "val" or self.data.val_size > 0, "score.reference", self.score.reference,
                 "needs data.val_size > 0 (the run has no validation split)")
        _require(self.loss.gradient == "standard" or not self.model.latent2_dim, "loss.gradient", self.loss.gradient,
                 "dreg is built for one stochastic layer (set model.latent2_dim=0)")
        _require(self.loss.gradient == "standard" or self.model.posterior == "gaussian", "loss.gradient",
                 self.loss.gradient, "dreg needs model.posterior=gaussian (it evaluates log q(z|x) at z with the "
                 "posterior's parameters held fixed, which a flow cannot without its inverse)")
        _require(self.model.likelihood == "bernoulli" or self.data.binarize == "none", "model.likelihood",
                 self.model.likelihood, "models grey levels: it needs data.binarize=none (binary pixels take "
                 "model.likelihood=bernoulli)")
        _require(not self.loss.free_bits or (self.model.prior, self.model.posterior) == ("normal", "gaussian"),
                 "loss.free_bits", self.loss.free_bits, "needs model.prior=normal and model.posterior=gaussian "
                 "(free bits floor each dimension's KL, which only a factorized prior and posterior define)")
        if self.data.dataset in CLASS_NAMES:  # the classes are known now; a folder's or an array's when read
            data, viz = resolve_classes(self.data, self.viz, CLASS_NAMES[self.data.dataset])
            object.__setattr__(self, "data", data)
            object.__setattr__(self, "viz", viz)


def with_classes(cfg: Config, classes: tuple[str, ...]) -> Config:
    """cfg with viz.digit and data.classes the indices of `classes`, those its data was read with."""
    data, viz = resolve_classes(cfg.data, cfg.viz, classes)
    return dataclasses.replace(cfg, data=data, viz=viz)


def resolve_classes(data: DataConfig, viz: VizConfig, classes: tuple[str, ...]) -> tuple[DataConfig, VizConfig]:
    """data.classes and viz.digit as indices of `classes`; viz.digit must be one of data.classes."""
    known = data.dataset in CLASS_NAMES
    where = data.dataset if known else data.path
    kept = tuple(class_index(c, classes, where, key="data.classes") for c in data.classes)
    _require(len(set(kept)) == len(kept), "data.classes", list(data.classes), "must name each class once")
    digit = class_index(viz.digit, classes, where, strict=known)
    if kept and digit not in kept:
        _require(not known, "viz.digit", viz.digit, f"must be one of the classes trained on (data.classes: "
                 f"{', '.join(classes[c] for c in kept)})")
        digit = kept[0]  # your own images: as for an index beyond their classes
    return dataclasses.replace(data, classes=kept), dataclasses.replace(viz, digit=digit)


def class_index(digit: int | str, classes: tuple[str, ...], where: str, strict: bool = True,
                key: str = "viz.digit") -> int:
    """A class (of `key`) as the index of one of `classes` (those of `where`, said in an error): a name matched in
    any case. Not `strict` (your own images, whose classes the config cannot know), an index beyond them means
    class 0."""
    if isinstance(digit, str):
        names = [n.lower() for n in classes]
        _require(digit.lower() in names, key, digit,
                 f"must be a class of {where} ({', '.join(classes)}) or its index 0..{len(classes) - 1}")
        return names.index(digit.lower())
    if digit >= len(classes) and not strict:
        return 0
    _require(0 <= digit < len(classes), key, digit, f"must be a class index 0..{len(classes) - 1} of {where}")
    return digit


def sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def valid_keys() -> list[str]:
    """Every dotted key a config file or override may set, e.g. 'train.lr'."""
    return [f"{name}.{f.name}" for name, cls in sections().items() for f in dataclasses.fields(cls)]


def keys_with_role(*roles: str) -> tuple[str, ...]:
    """The dotted keys whose role is one of `roles`, in config order."""
    return tuple(f"{name}.{f.name}" for name, cls in sections().items() for f in dataclasses.fields(cls)
                 if f.metadata["role"] in roles)


# What may differ between a checkpoint's config and the run that continues (or evaluates) it, and what a
# comparison of runs leaves out of their differences
MAY_CHANGE_ON_RESUME = keys_with_role(DURATION, SETTING)
NOT_COMPARED = keys_with_role(SETTING)
