"""The Python API: a trained model from a run directory or checkpoint; images in, images out.

    from vae import load
    model = load("outputs/mnist")                  # or a .pt file; device="cpu" | "cuda" | "auto"
    mu, logvar = model.encode(images)              # uint8 0..255 or float [0, 1]: (N, C, H, W), (N, H, W), (N, D) ...
    probs = model.reconstruct(images)              # the means of p(x|z), in the layout the images came in
    z = model.code(images)                         # what the decoder reads of each: mu, or (z1, z2) under model.skip
    probs = model.decode(z)                        # the means of p(x|z) at any z of that width: (N, C, H, W)
    model.shape, model.classes                     # (C, H, W) of the images it was trained on, its label names
    p = model.prior()                              # p(z): N(0, I) or a Gaussian mixture (mog, the VampPrior)
    model.score(images, reference=ref_images)      # per-image scores in nats: how unusual each image is
    model.compare(ref_images, new_images)          # how different two datasets are: KL, test, AUROCs
"""
from __future__ import annotations

from pathlib import Path

import torch

from vae.config.schema import Config
from vae.data.load import NEW_DRAW
from vae.data.split import Split
from vae.denormals import flushed_denormals
from vae.device import resolve_device
from vae.errors import UserError
from vae.evaluate.estimators import IWAE_EXAMPLES, iwae_batch
from vae.model.distributions import Prior
from vae.model.likelihoods import LEVELS
from vae.model.vae import VAE, build_model
from vae.run.checkpoint import evaluated_weights, load_checkpoint, load_state, resolve_checkpoint


def layouts(shape: tuple[int, int, int]) -> dict[tuple[int, ...], bool]:
    """The layouts one image of `shape` (C, H, W) may come in, each mapped to whether its channels come last:
    (C, H, W), flat (C * H * W,), and (H, W) when grey or (H, W, C) when colour (as PIL and NumPy hold it)."""
    c, h, w = shape
    return {(c, h, w): False, (c * h * w,): False, **({(h, w): False} if c == 1 else {(h, w, c): True})}


def as_pixels(images, device: torch.device, shape: tuple[int, int, int]) -> tuple[torch.Tensor, bool]:
    """Images of `shape` (C, H, W) (a tensor or NumPy array: uint8 0..255, or float in [0, 1]; one, or N of them in
    a layout of `layouts`) as (N, C * H * W) float32 on `device`, and whether their channels came last."""
    x, forms = torch.as_tensor(images), layouts(shape)
    if tuple(x.shape) in forms:
        x = x[None]
    last = forms.get(tuple(x.shape[1:]))
    if last is None or x.shape[0] == 0:
        shown = ", ".join(str(f) for f in forms)
        raise UserError(f"images must be one of {shown}, or N of them (N, ...); got shape {tuple(x.shape)}")
    x = x.movedim(-1, 1) if last else x
    if x.dtype == torch.uint8:
        return x.to(device).reshape(len(x), -1).float().div_(255), last
    if not x.is_floating_point():
        raise UserError(f"images must be uint8 (0..255) or float (0..1); got {x.dtype}")
    x = x.to(device, torch.float32).reshape(len(x), -1)
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise UserError("float images must lie in [0, 1] (divide uint8 images by 255, or pass them as uint8)")
    return x, last


class Model:
    """A trained VAE in eval mode; every method runs without gradients on `device`, and those that measure (nll,
    score, compare) with subnormal numbers flushed to zero, as evaluate.py does."""

    def __init__(self, module: VAE, config: Config, device: torch.device, checkpoint: Path, classes: tuple[str, ...]):
        self.module, self.config, self.device, self.checkpoint = module, config, device, checkpoint
        self.shape, self.classes = module.shape, classes  # (C, H, W) of its images; the name of each label

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (f"Model({self.checkpoint}, {h}x{w}x{c} images, latent_dim={self.module.latent_dim}, "
                f"device={self.device})")

    @torch.no_grad()
    def encode(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))) of each image (of z1 with two stochastic layers; under a flow, its
        base Gaussian): (N, latent) each."""
        return self.module.encode(as_pixels(images, self.device, self.shape)[0])

    @torch.no_grad()
    def decode(self, z) -> torch.Tensor:
        """The means of p(x|z) for latents z (N, code_dim) or (code_dim,): images (N, C, H, W) in [0, 1]. code_dim is
        latent_dim, or latent_dim + latent2_dim (z1, then z2) where the decoder reads both (model.skip)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        z = z[None] if z.dim() == 1 else z
        width = self.module.code_dim
        if z.dim() != 2 or z.shape[1] != width:
            raise UserError(f"z must be (N, {width}) or ({width},); got shape {tuple(z.shape)}")
        return self.module.means(self.module.decode(z))

    @torch.no_grad()
    def code(self, images) -> torch.Tensor:
        """What the decoder reads of each image, (N, code_dim): its posterior mean (under a flow, the flow's image of
        it), and z2's mean beside it where the decoder reads both (model.skip)."""
        return self.module.code(as_pixels(images, self.device, self.shape)[0])

    @torch.no_grad()
    def reconstruct(self, images) -> torch.Tensor:
        """The means of p(x|z) decoded from each image's code (its posterior mean, or under a flow the flow's image of
        the base mean), in the images' own shape."""
        shape = torch.as_tensor(images).shape
        x, channels_last = as_pixels(images, self.device, self.shape)
        out = self.decode(self.module.code(x))
        return (out.movedim(1, -1) if channels_last else out).reshape(shape)

    @torch.no_grad()
    def prior(self) -> Prior:
        """p(z) of the top layer as a distribution with log_prob(z) and sample(noise): N(0, I), or a
        GaussianMixture (log_weights (K,), mu and logvar (K, L)): the VampPrior at its pseudo-inputs is one."""
        return self.module.prior_distribution()

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images: z ~ p(z) (ancestrally with two layers), then the means of p(x|z): (n, C, H, W)."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        noise = torch.randn(n, self.module.prior_noise_dim, generator=torch.Generator().manual_seed(seed))
        noise = noise.to(self.device)
        return self.module.means(self.module.generate(noise))

    @torch.no_grad()
    @flushed_denormals()
    def nll(self, images, k: int | None = None, seed: int | None = None) -> torch.Tensor:
        """IWAE-k estimate of -log p(x) per image, in nats: (N,). k and seed default to eval.iwae_samples and
        eval.seed, so the numbers are evaluate.py's for the same images."""
        k = self.config.eval.iwae_samples if k is None else k
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        x = as_pixels(images, self.device, self.shape)[0]
        if self.module.likelihood.evaluation.eight_bit:  # a probability of 8-bit pixels only
            levels = x * (LEVELS - 1)
            if not bool((levels - levels.round()).abs().max() < 1e-3):
                raise UserError(f"this model's likelihood ({self.config.model.likelihood}) is measured as a "
                                "probability of 8-bit pixels: pass uint8 images, or floats that are multiples of 1/255")
            x = levels.round_().div_(LEVELS - 1)
        gen = torch.Generator(device=self.device).manual_seed(self.config.eval.seed if seed is None else seed)
        return torch.cat([iwae_batch(self.module, batch, k, gen)[0] for batch in x.split(IWAE_EXAMPLES)]).float()

    def _split(self, images, least: int = 1) -> Split:
        """Images as a Split of 8-bit images on the device (floats rounded to the nearest of 256 levels), binarized
        as `evaluate.py --against` binarizes new images where the model's data were binarized (binary images stay
        as they are); at least `least` of them."""
        x = as_pixels(images, self.device, self.shape)[0]
        if len(x) < least:
            raise UserError(f"reference images: at least {least} are needed, got {len(x)}")
        eight_bit = x.mul(LEVELS - 1).round_().to(torch.uint8).view(len(x), *self.shape)
        split = Split(eight_bit, torch.zeros(len(x), dtype=torch.long, device=self.device), self.classes)
        return split if self.config.data.binarize == "none" else split.binarized(self.config.data.seed + NEW_DRAW)

    @torch.no_grad()
    @flushed_denormals()
    def score(self, images, reference=None, scores: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """How unusual each image is to the model: score name -> (N,) float64 nats on the CPU, higher = more unusual
        (`nll`, `rate`, `complexity`, `regret`; `typicality` and `kl_to_reference` need `reference`, images of the
        data to measure against). `scores` defaults to score.scores, else every score this model defines; the
        settings are the run's score.* keys and eval.seed, as `evaluate.py --against` uses them. Images are
        measured as 8-bit."""
        from vae.evaluate.heldout import encode_split
        from vae.novelty.scores import Reference, chosen_scores, score_split
        cfg, needs = self.config, ("typicality", "kl_to_reference")
        if reference is None and scores and set(needs) & set(scores):
            raise UserError(f"{' and '.join(s for s in needs if s in scores)} need reference images: pass reference=")
        scores = chosen_scores(self.module, cfg, tuple(scores or ()))
        split = self._split(images)
        post = encode_split(self.module, split, cfg.eval.seed)
        if reference is None:
            return score_split(self.module, split, post, None, cfg, tuple(s for s in scores if s not in needs))
        ref = self._split(reference, least=2)
        ref_post = encode_split(self.module, ref, cfg.eval.seed)
        nll_mean = score_split(self.module, ref, ref_post, None, cfg, ("nll",))["nll"].mean().item() \
            if "typicality" in scores else None
        return score_split(self.module, split, post, Reference(ref_post, nll_mean), cfg, scores)

    @torch.no_grad()
    @flushed_denormals()
    def compare(self, reference, new) -> dict:
        """How different `new` images are from `reference` images, as evaluate.py --against measures them: "scores"
        (per score: the means in nats and bits/dim, AUROC, AUPR, FPR at 95% TPR; new images positive), "dataset"
        ("aggregate_kl": KL(q_new(z) || q_ref(z)) in nats with its 95% interval; "test": the MMD test's p-value and
        whether the data differ at score.alpha), and the per-image "reference_scores" and "new_scores"."""
        from vae.novelty.measure import measure
        from vae.novelty.scores import chosen_scores
        m = measure(self.module, self._split(reference, least=2), self._split(new), self.config,
                    chosen_scores(self.module, self.config))
        return {"scores": m.scores, "dataset": m.dataset, "reference_scores": m.ref_scores, "new_scores": m.new_scores}


def load(path: str | Path, device: str = "auto") -> Model:
    """The model of a run directory (its checkpoints/last.pt) or of a checkpoint file, on `device`."""
    checkpoint = resolve_checkpoint(path)
    state, cfg = load_checkpoint(checkpoint)
    try:
        where = resolve_device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    module = build_model(cfg.model, tuple(state["data"]["shape"]))
    load_state(module, evaluated_weights(state), checkpoint)
    return Model(module.to(where).eval(), cfg, where, checkpoint, tuple(state["data"]["classes"]))
