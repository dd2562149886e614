import torch
from matplotlib.image import imread

from vae.config.schema import ModelConfig
from vae.data.mnist import load_dataset
from vae.evaluate.pictures import fixed_latents, save_pictures
from vae.evaluate.plots import plot_loss_curves, save_grid, save_pairs
from vae.model.vae import VAE


def grey(path) -> torch.Tensor:
    """A PNG as an (H, W) float tensor of grey levels 0..255."""
    rgb = torch.from_numpy(imread(path))[..., :3]  # PNG -> floats in [0, 1]
    return rgb.mean(-1) * 255


def test_pairs_put_each_row_of_originals_above_its_reconstructions(tmp_path):
    originals, recons = torch.ones(16, 1, 28, 28), torch.zeros(16, 1, 28, 28)
    save_pairs(originals, recons, tmp_path / "pairs.png", nrow=8)
    img = grey(tmp_path / "pairs.png")
    assert img.shape == (4 * 30 + 2, 8 * 30 + 2)  # 28 px + 2 px padding per cell
    row_means = [img[2 + 30 * r: 30 * (r + 1), 2:30].mean().item() for r in range(4)]
    assert row_means == [255.0, 0.0, 255.0, 0.0]


def test_grid_of_64_is_8_by_8_and_not_blank(tmp_path):
    save_grid(torch.rand(64, 1, 28, 28), tmp_path / "grid.png")
    img = grey(tmp_path / "grid.png")
    assert img.shape == (242, 242) and img.std() > 10


def test_loss_curves_plot_is_written(tmp_path):
    rows = [{"epoch": e, "test_active_units": 10 + e,
             **{f"{s}_{t}": 100.0 / e for s in ("train", "test") for t in ("loss", "recon", "kl")}}
            for e in (1, 2, 3)]
    plot_loss_curves(rows, tmp_path / "curves.png")
    img = grey(tmp_path / "curves.png")
    assert img.shape == (380, 1700) and img.std() > 10


def test_pictures_of_a_model_include_the_chosen_digit(tmp_path, mnist_root):
    _, test = load_dataset(mnist_root, download=False, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden_dims=(16,), latent_dim=3))
    paths = save_pictures(model, test, fixed_latents(3, 0, torch.device("cpu")), 7, tmp_path, "_x")
    assert [p.name for p in paths] == ["recon_x.png", "digit7_x.png", "samples_x.png"]
    # 32 test images -> 8 grid rows; the 20 sevens -> 16 shown -> 4 rows; 64 samples -> 8 rows.
    for p, rows in zip(paths, (8, 4, 8)):
        img = grey(p)
        assert img.shape == (rows * 30 + 2, 242) and img.std() > 1
    # The digit grid's originals (grid rows 0, 2, ...) are 7s: a cross at row/column 18 +- 1.
    first = grey(paths[1])[2:30, 2:30]
    assert first[17:21, 3:25].mean() > 100 and first[:10, :10].mean() < 5


def test_a_grid_of_colour_images_of_another_size_keeps_their_colours(tmp_path):
    images = torch.zeros(6, 3, 5, 9)
    images[:, 0] = 1.0  # pure red
    save_grid(images, tmp_path / "red.png", nrow=3)
    rgb = torch.from_numpy(imread(tmp_path / "red.png"))[..., :3] * 255
    assert rgb.shape == (2 * 7 + 2, 3 * 11 + 2, 3)  # 5 x 9 cells + 2 px padding
    cell = rgb[2:7, 2:11]
    assert (cell[..., 0] == 255).all() and (cell[..., 1:] == 0).all()
