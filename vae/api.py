"""The Python API: a trained model from a run directory or checkpoint; images in, images out.

    from vae import load
    model = load("outputs/mnist")                  # or a .pt file; device="cpu" | "cuda" | "auto"
    mu, logvar = model.encode(images)              # uint8 (28, 28) / (N, 28, 28), float [0, 1] (N, 784) ...
    probs = model.reconstruct(images)              # Bernoulli means, in the layout the images came in
    p = model.prior()                              # p(z): N(0, I) or a Gaussian mixture (mog, the VampPrior)
"""
from __future__ import annotations

from pathlib import Path

import torch

from vae.config.schema import Config
from vae.data.split import IMAGE_SHAPE, PIXELS
from vae.device import resolve_device
from vae.errors import UserError
from vae.evaluate.estimators import IWAE_EXAMPLES, iwae_batch
from vae.model.distributions import Prior
from vae.model.vae import VAE, build_model
from vae.run.checkpoint import evaluated_weights, load_checkpoint, load_state, resolve_checkpoint

SHAPES = "(28, 28), (N, 28, 28), (N, 1, 28, 28), (784,) or (N, 784)"


def as_pixels(images, device: torch.device) -> torch.Tensor:
    """Images (a tensor or NumPy array: uint8 0..255, or float in [0, 1]) as (N, 784) float32 on `device`."""
    x = torch.as_tensor(images)
    single = tuple(x.shape) in ((28, 28), (PIXELS,))
    if single:
        x = x[None]
    if tuple(x.shape[1:]) not in ((28, 28), IMAGE_SHAPE, (PIXELS,)) or x.shape[0] == 0:
        raise UserError(f"images must be {SHAPES}; got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.to(device).reshape(-1, PIXELS).float().div_(255)
    if not x.is_floating_point():
        raise UserError(f"images must be uint8 (0..255) or float (0..1); got {x.dtype}")
    x = x.to(device, torch.float32).reshape(-1, PIXELS)
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise UserError("float images must lie in [0, 1] (divide uint8 images by 255, or pass them as uint8)")
    return x


class Model:
    """A trained VAE in eval mode; every method runs without gradients on `device`."""

    def __init__(self, module: VAE, config: Config, device: torch.device, checkpoint: Path):
        self.module, self.config, self.device, self.checkpoint = module, config, device, checkpoint

    def __repr__(self) -> str:
        return f"Model({self.checkpoint}, latent_dim={self.module.latent_dim}, device={self.device})"

    @torch.no_grad()
    def encode(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))) of each image (of z1 with two stochastic layers; under a flow, its
        base Gaussian): (N, latent) each."""
        return self.module.encode(as_pixels(images, self.device))

    @torch.no_grad()
    def decode(self, z) -> torch.Tensor:
        """Bernoulli means of p(x|z) for latents z (N, latent) or (latent,): (N, 1, 28, 28) in [0, 1]."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        z = z[None] if z.dim() == 1 else z
        if z.dim() != 2 or z.shape[1] != self.module.latent_dim:
            raise UserError(f"z must be (N, {self.module.latent_dim}) or ({self.module.latent_dim},); "
                            f"got shape {tuple(z.shape)}")
        return torch.sigmoid(self.module.decode(z)).view(-1, *IMAGE_SHAPE)

    @torch.no_grad()
    def reconstruct(self, images) -> torch.Tensor:
        """Bernoulli means decoded from each image's code (its posterior mean, or under a flow the flow's image of
        the base mean), in the images' own shape."""
        shape = torch.as_tensor(images).shape
        return self.decode(self.module.code(as_pixels(images, self.device))).reshape(shape)

    @torch.no_grad()
    def prior(self) -> Prior:
        """p(z) of the top layer as a distribution with log_prob(z) and sample(noise): N(0, I), or a
        GaussianMixture (log_weights (K,), mu and logvar (K, L)): the VampPrior at its pseudo-inputs is one."""
        return self.module.prior_distribution()

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images: z ~ p(z) (ancestrally with two layers), then the Bernoulli means of p(x|z): (n, 1, 28, 28)."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        noise = torch.randn(n, self.module.prior_noise_dim, generator=torch.Generator().manual_seed(seed))
        noise = noise.to(self.device)
        return torch.sigmoid(self.module.generate(noise)).view(-1, *IMAGE_SHAPE)

    @torch.no_grad()
    def nll(self, images, k: int | None = None, seed: int | None = None) -> torch.Tensor:
        """IWAE-k estimate of -log p(x) per image, in nats: (N,). k and seed default to eval.iwae_samples and
        eval.seed, so the numbers are evaluate.py's for the same images."""
        k = self.config.eval.iwae_samples if k is None else k
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        x = as_pixels(images, self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.config.eval.seed if seed is None else seed)
        return torch.cat([iwae_batch(self.module, batch, k, gen)[0] for batch in x.split(IWAE_EXAMPLES)]).float()


def load(path: str | Path, device: str = "auto") -> Model:
    """The model of a run directory (its checkpoints/last.pt) or of a checkpoint file, on `device`."""
    checkpoint = resolve_checkpoint(path)
    state, cfg = load_checkpoint(checkpoint)
    try:
        where = resolve_device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    module = build_model(cfg.model)
    load_state(module, evaluated_weights(state), checkpoint)
    return Model(module.to(where).eval(), cfg, where, checkpoint)
