"""report.html's live decoder in a real browser (headless Chromium): it decodes as torch does, and the
sliders, the latent map and the buttons redraw it."""
import io
import json
import math

import pytest
import torch
from chromium import Chromium, chromium_binary
from conftest import digit_split
from matplotlib.image import imread

from vae.config.schema import Config, ModelConfig
from vae.data.split import Split
from vae.evaluate.explorer import save_explorer
from vae.evaluate.heldout import encode_split
from vae.evaluate.report import explorer_section
from vae.model.vae import build_model
from vae.run.checkpoint import load_checkpoint

BINARY = chromium_binary()
pytestmark = pytest.mark.skipif(BINARY is None, reason="no chromium here: `apt-get install -y chromium` (.ci/run "
                                                       "does) to run the browser tests")
READY = "document.body && document.body.dataset.explorer === 'ready'"


@pytest.fixture(scope="module")
def browser():
    page = Chromium(BINARY)
    yield page
    page.close()


def trained_model(run):
    state, cfg = load_checkpoint(run / "checkpoints" / "best.pt")
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def torch_means(model, z):
    return torch.sigmoid(model.decode(torch.as_tensor(z, dtype=torch.float32))).double()


def page_means(browser, z):
    return torch.tensor(browser.evaluate(f"vaeExplorer.decode({json.dumps(z.tolist())})"), dtype=torch.float64)


def canvas(browser, name):
    """The grey levels of a 28 x 28 canvas of the page: (784,) in 0..255."""
    return torch.tensor(browser.evaluate(
        f"Array.from(document.getElementById('{name}').getContext('2d').getImageData(0, 0, 28, 28).data)"
        ".filter((_, i) => i % 4 === 0)"), dtype=torch.float64)


def centre_of(browser, selector, fraction=0.5):
    """Viewport coordinates of a point `fraction` of the way across an element, scrolled into view."""
    return browser.evaluate(f"""(() => {{ const e = document.querySelector("{selector}");
        e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
        return [r.left + {fraction} * r.width, r.top + r.height / 2]; }})()""")


@pytest.mark.parametrize("latent", [2, 4])
def test_the_page_decodes_what_torch_decodes(browser, evaluated, latent):
    run, _ = evaluated[latent]
    model = trained_model(run)
    browser.open((run / "report.html").as_uri(), READY)
    z = 2 * torch.randn(16, latent, generator=torch.Generator().manual_seed(0))
    assert (page_means(browser, z) - torch_means(model, z)).abs().max() <= 1e-4
    # the first drawing: the first test image's posterior mean, decoded and quantized to 8 bits
    start = torch.tensor(browser.evaluate("vaeExplorer.z()"))
    assert (canvas(browser, "decoded") - (255 * torch_means(model, start[None])[0]).round()).abs().max() <= 1


def test_a_slider_click_moves_its_dimension_and_redraws(browser, evaluated):
    run, _ = evaluated[4]
    model = trained_model(run)
    browser.open((run / "report.html").as_uri(), READY)
    top = json.loads((run / "eval" / "explorer.json").read_text())["sliders"][0]
    before_z, before = browser.evaluate("vaeExplorer.z()"), canvas(browser, "decoded")
    width = top["high"] - top["low"]
    target = 0.1 if before_z[top["dim"]] > top["low"] + width / 2 else 0.9  # the far side of the thumb
    browser.click(*centre_of(browser, f"#z{top['dim']}", target))
    after_z = browser.evaluate("vaeExplorer.z()")
    moved = [d for d in range(4) if after_z[d] != before_z[d]]
    assert moved == [top["dim"]] and abs(after_z[top["dim"]] - (top["low"] + target * width)) < 0.1 * width
    after = canvas(browser, "decoded")
    assert (after - before).abs().max() > 2  # the image changed (beyond 8-bit rounding)...
    assert (after - (255 * torch_means(model, torch.tensor([after_z]))[0]).round()).abs().max() <= 1  # ...to p(x|z)


def test_a_click_on_the_map_decodes_that_point_of_the_plane(browser, evaluated):
    run, _ = evaluated[4]
    browser.open((run / "report.html").as_uri(), READY)
    plane = json.loads((run / "eval" / "explorer.json").read_text())["map"]
    browser.click(*centre_of(browser, "#map", 0.3))
    z = torch.tensor(browser.evaluate("vaeExplorer.z()"), dtype=torch.float64)
    origin, axes = (torch.tensor(plane[key], dtype=torch.float64) for key in ("origin", "axes"))
    coefficients = axes @ (z - origin)  # the axes are orthonormal principal directions
    assert (origin + coefficients @ axes - z).abs().max() < 1e-6  # the point lies in the map's plane
    assert "principal component 1" in browser.evaluate("document.getElementById('map-point').textContent")


def test_the_sample_button_and_the_interpolation_redraw(browser, evaluated):
    run, _ = evaluated[2]
    model = trained_model(run)
    browser.open((run / "report.html").as_uri(), READY)
    before = browser.evaluate("vaeExplorer.z()")
    browser.click(*centre_of(browser, "#sample"))
    assert browser.evaluate("vaeExplorer.z()") != before
    browser.click(*centre_of(browser, "#t", 0.1))  # t about 0.1 (it starts at 0.5)
    t = browser.evaluate("Number(document.getElementById('t').value)")
    a, b = (torch.tensor(browser.evaluate(f"vaeExplorer.example(document.getElementById('{end}').value).mu"))
            for end in ("from", "to"))
    assert t < 0.2 and (a - b).abs().max() > 0
    expected = (255 * torch_means(model, ((1 - t) * a + t * b)[None])[0]).round()
    assert (canvas(browser, "between") - expected).abs().max() <= 1


def test_a_screenshot_of_the_report_is_not_blank(browser, evaluated):
    run, _ = evaluated[2]
    browser.open((run / "report.html").as_uri(), READY)
    browser.evaluate("window.scrollTo(0, 0)")
    shot = torch.from_numpy(imread(io.BytesIO(browser.screenshot()), format="png"))[..., :3]  # (H, W, 3) in [0, 1]
    assert shot.shape[1] >= 800
    assert shot.std() > 0.1 and (shot < 0.5).float().mean() > 0.01  # text, digits and a map on white


def open_explorer(browser, tmp_path, model, split, model_cfg, by_kl=False):
    """The explorer section alone in a page, for `model` on `split`, opened and ready; `by_kl`: its sliders ranked by
    the KL of each dimension (z1's, and z2's beside them), else by the codes' variance."""
    post = encode_split(model, split, seed=0)
    (tmp_path / "eval").mkdir()
    kl = post.kl_dims.mean(0).tolist() if by_kl else None
    L = model_cfg.latent_dim
    save_explorer(model, split, post, Config(model=model_cfg), kl and kl[:L], tmp_path / "eval", kl and kl[L:])
    page = tmp_path / "page.html"
    page.write_text(f"<!DOCTYPE html><html><body>{explorer_section(tmp_path)}</body></html>")
    browser.open(page.as_uri(), READY)


@pytest.mark.parametrize("model_cfg", [
    ModelConfig(hidden_dims=(16, 8), latent_dim=3, activation="tanh"),
    ModelConfig(hidden_dims=(16,), latent_dim=3, activation="elu"),
    ModelConfig(hidden_dims=(16,), latent_dim=5, activation="gelu"),
    ModelConfig(hidden_dims=(16,), latent_dim=3, latent2_dim=2, hidden2_dims=(8,)),
    ModelConfig(hidden_dims=(16,), latent_dim=3, latent2_dim=2, hidden2_dims=(8,), inference="top_down", skip=True),
    ModelConfig(hidden_dims=(16, 8), latent_dim=3, latent2_dim=2, hidden2_dims=(8,), activation="glu"),
], ids=["tanh-2-hidden", "elu", "gelu", "two-layers", "ladder-with-skip", "gated-two-layers"])
def test_every_mlp_decoder_decodes_in_the_page(browser, tmp_path, model_cfg):
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    open_explorer(browser, tmp_path, model, digit_split(40, seed=0), model_cfg, by_kl=True)
    z = 3 * torch.randn(8, model.code_dim, generator=torch.Generator().manual_seed(1))  # (z1, z2) under skip
    assert (page_means(browser, z) - torch_means(model, z)).abs().max() <= 1e-4
    # With Math.random fixed at 0.1 every draw of N(0, 1) (Box-Muller) is g: z2 = g, then z1 = mu_p(z2) + sd_p(z2) g
    browser.evaluate("(Math.random = () => 0.1, 0)")
    browser.click(*centre_of(browser, "#sample"))
    sample = torch.tensor(browser.evaluate("vaeExplorer.z()"), dtype=torch.float64)
    g = math.sqrt(-2 * math.log(0.9)) * math.cos(0.2 * math.pi)
    expected = torch.full((model_cfg.latent_dim,), g)
    if model_cfg.latent2_dim:
        z2 = torch.full((model_cfg.latent2_dim,), g)
        with torch.no_grad():
            mu_p, logvar_p = (t.double() for t in model.conditional_prior(z2.float()))
        z1 = mu_p + torch.exp(0.5 * logvar_p) * g
        expected = torch.cat([z1, z2]) if model_cfg.skip else z1
    torch.testing.assert_close(sample, expected.double(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("raw_logvar", [-100.0, 50.0])
def test_the_page_samples_z1_at_p_z1_given_z2_s_clamped_spread(browser, tmp_path, raw_logvar):
    """p(z1|z2) = N(0, e^raw): the page's draws of z1 spread as the model's clamp has it (sd e^-3 or e^1), where
    e^-50 or e^25 would follow without it."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(hidden_dims=(16,), latent_dim=3, latent2_dim=2, hidden2_dims=(8,))
    model = build_model(model_cfg).eval()
    with torch.no_grad():
        model.prior1[-1].weight.zero_()
        model.prior1[-1].bias.copy_(torch.tensor([0.0] * 3 + [raw_logvar] * 3))
    open_explorer(browser, tmp_path, model, digit_split(40, seed=0), model_cfg)
    draws = []
    for _ in range(20):
        browser.click(*centre_of(browser, "#sample"))
        draws += browser.evaluate("vaeExplorer.z()")
    expected = math.exp(0.5 * min(max(raw_logvar, -6.0), 2.0))
    assert 0.7 < torch.tensor(draws).std().item() / expected < 1.4  # 60 draws: the std's SE is about 9%


def test_the_page_samples_a_mixture_prior_component_by_component(browser, tmp_path):
    torch.manual_seed(0)
    model_cfg = ModelConfig(hidden_dims=(16,), latent_dim=2, prior="mog", prior_components=3)
    model = build_model(model_cfg).eval()
    with torch.no_grad():  # three sharp components far apart: each page sample must sit on one of them
        model.prior.mu.copy_(torch.tensor([[-30.0, 0.0], [0.0, 30.0], [30.0, 0.0]]))
        model.prior.logvar.fill_(-12.0)
    open_explorer(browser, tmp_path, model, digit_split(40, seed=0), model_cfg)
    hit = set()
    for _ in range(12):
        browser.click(*centre_of(browser, "#sample"))
        z = torch.tensor(browser.evaluate("vaeExplorer.z()"))
        distance = (z - model.prior.mu.detach()).norm(dim=-1)
        assert distance.min() < 0.05
        hit.add(int(distance.argmin()))
    assert len(hit) >= 2  # equal weights: 12 draws from one component alone have probability 3 * 3^-12


@pytest.mark.parametrize("likelihood, components", [("continuous_bernoulli", 1), ("logistic", 2)])
def test_the_page_draws_colour_images_of_any_size_and_each_likelihoods_means(browser, tmp_path, likelihood, components):
    torch.manual_seed(0)
    model_cfg = ModelConfig(hidden_dims=(16,), latent_dim=3, likelihood=likelihood, likelihood_components=components)
    shape = (3, 6, 5)
    model = build_model(model_cfg, shape).eval()
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (20, *shape), generator=g, dtype=torch.uint8), torch.arange(20) % 2, ("a", "b"))
    open_explorer(browser, tmp_path, model, split, model_cfg)
    z = 2 * torch.randn(5, 3, generator=g)
    with torch.no_grad():
        expected = model.means(model.decode(z)).flatten(1).double()  # (5, 90): the red, green and blue planes
    assert (page_means(browser, z) - expected).abs().max() <= 1e-4
    pixels = torch.tensor(browser.evaluate(  # the original test image's canvas: 5 x 6, RGBA
        "Array.from(document.getElementById('original').getContext('2d').getImageData(0, 0, 5, 6).data)"))
    data = json.loads((tmp_path / "eval" / "explorer.json").read_text())
    first = data["examples"][data["start"]]["index"]
    assert pixels.shape == (6 * 5 * 4,)
    assert torch.equal(pixels.view(30, 4)[:, :3], split.images[first].flatten(1).T.long())
