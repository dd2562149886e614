"""Your own images: folders and .npz arrays of any size, grey or colour, read into splits and trained on,
evaluated, explored and loaded through the API at their own shape; bad data is one line naming the file."""
import json

import numpy as np
import pytest
import torch
from conftest import with_
from PIL import Image

from vae import load
from vae.config.load import load_config
from vae.config.schema import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
from vae.data.load import load_data
from vae.errors import UserError
from vae.evaluate.analyze import evaluate_checkpoint
from vae.train.loop import train

CPU = torch.device("cpu")


def images_of(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """(n, C, H, W) uint8: image i is bright on its row i % H, on a dark noisy ground."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 60, (n, *shape), generator=g, dtype=torch.uint8)
    for i in range(n):
        x[i, :, i % shape[1]] = 200 + i % 50
    return x


def write_png(image: torch.Tensor, path) -> None:
    """A (C, H, W) uint8 image as a PNG file, through Pillow."""
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)


def write_folder(root, classes: dict[str, torch.Tensor]):
    """PNG files of each class's (N, C, H, W) images in root/<class>/ (root itself for the class '')."""
    for name, images in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            write_png(image, str(folder / f"{i:03d}.png"))
    return root


def run_cfg(tmp_path, data: DataConfig, **model) -> Config:
    return Config(data=data, model=ModelConfig(hidden_dims=(16,), latent_dim=3, **model),
                  train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu"),
                  output=OutputConfig(dir=str(tmp_path / "run")))


# Reading

def test_a_folder_of_class_folders_gives_their_images_labels_and_names(tmp_path):
    cats, dogs = images_of(12, (1, 7, 5), seed=0), images_of(8, (1, 7, 5), seed=1)
    root = write_folder(tmp_path / "pets", {"dog": dogs, "cat": cats})
    splits = load_data(DataConfig(dataset="folder", path=str(root), test_fraction=0.25), CPU)
    assert splits.classes == ("cat", "dog") and splits.shape == (1, 7, 5)  # sorted names, as ImageFolder
    assert len(splits.train) == 15 and len(splits.test) == 5
    # every image once, with its label, in one split or the other: PNG is lossless
    got = {(bytes(x.flatten().tolist()), int(y))
           for s in (splits.train, splits.test) for x, y in zip(s.images, s.labels)}
    want = {(bytes(x.flatten().tolist()), label) for label, xs in enumerate((cats, dogs)) for x in xs}
    assert got == want
    again = load_data(DataConfig(dataset="folder", path=str(root), test_fraction=0.25), CPU)
    other = load_data(DataConfig(dataset="folder", path=str(root), test_fraction=0.25, seed=1), CPU)
    assert torch.equal(again.test.images, splits.test.images)  # seeded by data.seed
    assert not torch.equal(other.test.images, splits.test.images)


def test_train_and_test_subfolders_are_the_splits_and_must_have_the_same_classes(tmp_path):
    write_folder(tmp_path / "d" / "train", {"a": images_of(6, (1, 4, 4), 0), "b": images_of(6, (1, 4, 4), 1)})
    write_folder(tmp_path / "d" / "test", {"a": images_of(3, (1, 4, 4), 2), "b": images_of(2, (1, 4, 4), 3)})
    splits = load_data(DataConfig(dataset="folder", path=str(tmp_path / "d"), val_size=4), CPU)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 5)
    assert splits.test.labels.tolist() == [0, 0, 0, 1, 1]
    write_folder(tmp_path / "d" / "test", {"c": images_of(1, (1, 4, 4), 4)})
    with pytest.raises(UserError, match=r"the classes of .*d/test \(a, b, c\) do not match the training images' "
                                        r"\(a, b\)"):
        load_data(DataConfig(dataset="folder", path=str(tmp_path / "d")), CPU)


def test_grey_images_beside_colour_ones_become_colour_and_a_flat_folder_is_one_class(tmp_path):
    grey, colour = images_of(3, (1, 6, 6), 0), images_of(3, (3, 6, 6), 1)
    root = write_folder(tmp_path / "mixed", {"": torch.cat([grey[:, [0, 0, 0]], colour])})
    write_png(grey[0], str(root / "grey.png"))  # a file of one channel beside files of three
    (root / "notes.txt").write_text("not an image: skipped, as ImageFolder skips it")
    splits = load_data(DataConfig(dataset="folder", path=str(root), test_fraction=0.1), CPU)
    assert splits.shape == (3, 6, 6) and splits.classes == ("all",)
    everything = torch.cat([splits.train.images, splits.test.images])
    assert len(everything) == 7 and set(torch.cat([splits.train.labels, splits.test.labels]).tolist()) == {0}
    assert any(torch.equal(x, grey[0].expand(3, -1, -1)) for x in everything)  # repeated to three channels


def test_npz_arrays_grey_or_colour_with_or_without_labels_and_splits(tmp_path):
    x = images_of(20, (3, 5, 4), 0).permute(0, 2, 3, 1).numpy()  # N x H x W x C, as NumPy holds images
    np.savez(tmp_path / "colour.npz", x=x)
    splits = load_data(DataConfig(dataset="npz", path=str(tmp_path / "colour.npz"), test_fraction=0.2), CPU)
    assert splits.shape == (3, 5, 4) and splits.classes == ("all",) and len(splits.test) == 4
    both = torch.cat([splits.train.images, splits.test.images]).permute(0, 2, 3, 1)
    assert sorted(map(bytes, both.reshape(20, -1).tolist())) == sorted(map(bytes, x.reshape(20, -1).tolist()))
    grey = images_of(10, (1, 3, 3), 1)[:, 0].numpy()
    np.savez(tmp_path / "split.npz", x_train=grey[:7], y_train=np.arange(7) % 3, x_test=grey[7:],
             y_test=np.array([2, 0, 1]))
    splits = load_data(DataConfig(dataset="npz", path=str(tmp_path / "split.npz")), CPU)
    assert splits.shape == (1, 3, 3) and splits.classes == ("0", "1", "2")
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(grey[7:]))
    assert splits.test.labels.tolist() == [2, 0, 1]


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    wide = torch.zeros(1, 8, 12, dtype=torch.uint8)
    wide[0, :, 2:10] = torch.arange(64, dtype=torch.uint8).reshape(8, 8)  # the centre 8 x 8: kept as it is
    square = torch.full((1, 16, 16), 90, dtype=torch.uint8)  # one grey level: halved in size, still 90
    root = write_folder(tmp_path / "sizes", {"": torch.stack([square])})
    write_png(wide, str(root / "wide.png"))
    with pytest.raises(UserError, match=r"images of different sizes: .*000.png is 16x16, .*wide.png is 8x12: set "
                                        r"data.image_size=S"):
        load_data(DataConfig(dataset="folder", path=str(root)), CPU)
    splits = load_data(DataConfig(dataset="folder", path=str(root), image_size=8, test_fraction=0.5), CPU)
    images = torch.cat([splits.train.images, splits.test.images])
    assert splits.shape == (1, 8, 8)
    assert any(torch.equal(x, wide[:, :, 2:10]) for x in images)
    assert any(bool((x == 90).all()) for x in images)


def test_image_size_applies_to_mnist_too(mnist_root):
    splits = load_data(DataConfig(root=str(mnist_root), download=False, image_size=16), CPU)
    assert splits.shape == (1, 16, 16) and splits.classes[2] == "2"


@pytest.mark.parametrize("case, message", [
    ("empty", r"empty holds no images \(.png, .jpg, .* files in it\)"),
    ("empty class", r"the class folder\(s\) b in .*hold no images"),
    ("corrupt", r"could not read the image .*broken.png: .*corrupt, or not an image"),
    ("missing", r"data.path=.*nowhere: no such folder"),
    ("npz dtype", r"dtype.npz: x must be uint8 \(0..255\), got float32"),
    ("npz shape", r"shape.npz: x must be N x H x W or N x H x W x C with C = 1 or 3 and N, H, W > 0, got "
                  r"\(4, 3, 3, 2\)"),
    ("npz labels", r"labels.npz: y must be 4 integer labels >= 0 \(one per image of x\), got \(3,\) int64"),
    ("npz keys", r"keys.npz must hold an array x \(or x_train and x_test\); it holds images"),
    ("npz pickle", r"could not read .*pickle.npz as a NumPy .npz"),
    ("npz truncated", r"could not read .*truncated.npz as a NumPy .npz"),
    ("npz npy", r"could not read .*npy.npz as a NumPy .npz: it holds one array, not named arrays"),
    ("npz empty", r"empty.npz: x must be N x H x W .* N, H, W > 0, got \(4, 0, 3\)"),
    ("no path", r"data.dataset needs data.path"),
])
def test_bad_data_is_one_line_naming_the_file(tmp_path, case, message):
    grey = images_of(4, (1, 3, 3), 0)
    path = tmp_path / "data"
    if case == "empty":
        (path / "empty").mkdir(parents=True)
        path = path / "empty"
    elif case == "empty class":
        write_folder(path, {"a": grey})
        (path / "b").mkdir()
    elif case == "corrupt":
        write_folder(path, {"": grey})
        write_png(grey[0], path / "whole.png")
        (path / "broken.png").write_bytes((path / "whole.png").read_bytes()[:30])  # a PNG cut short
    elif case == "missing":
        path = tmp_path / "nowhere"
    elif case.startswith("npz"):
        path = tmp_path / f"{case.split()[1]}.npz"
        arrays = {"dtype": {"x": grey[:, 0].numpy().astype(np.float32)},
                  "shape": {"x": np.zeros((4, 3, 3, 2), np.uint8)},
                  "labels": {"x": grey[:, 0].numpy(), "y": np.arange(3)},
                  "keys": {"images": grey[:, 0].numpy()},
                  "pickle": {"x": np.array([{"a": 1}], dtype=object)},
                  "truncated": {"x": grey[:, 0].numpy()}, "npy": None,
                  "empty": {"x": np.zeros((4, 0, 3), np.uint8)}}[case.split()[1]]
        if arrays is None:  # one array saved as .npy, under a .npz name
            with open(path, "wb") as f:
                np.save(f, grey[:, 0].numpy())
        else:
            np.savez(path, **arrays)
        if case == "npz truncated":
            path.write_bytes(path.read_bytes()[:100])
    dataset = "npz" if case.startswith("npz") else "folder"
    with pytest.raises(UserError, match=message):
        if case == "no path":
            load_config(None, ["data.dataset=folder"])
        load_data(DataConfig(dataset=dataset, path=str(path)), CPU)


def test_two_classes_train_with_the_default_viz_digit_which_then_means_class_0(tmp_path):
    root = write_folder(tmp_path / "pets", {"cat": images_of(10, (1, 4, 4), 0), "dog": images_of(10, (1, 4, 4), 1)})
    result = train(with_(run_cfg(tmp_path, DataConfig(dataset="folder", path=str(root))), train={"epochs": 1}))
    assert result.run_dir.joinpath("images", "digit0_epoch001.png").is_file()  # viz.digit=2 beyond cat and dog


def test_viz_digit_takes_a_class_folders_name(tmp_path):
    root = write_folder(tmp_path / "pets", {"cat": images_of(10, (1, 4, 4), 0), "dog": images_of(10, (1, 4, 4), 1)})
    cfg = run_cfg(tmp_path, DataConfig(dataset="folder", path=str(root)))
    result = train(with_(cfg, viz={"digit": "Dog"}, train={"epochs": 1}))
    assert (result.run_dir / "images" / "digit1_epoch001.png").is_file()
    with pytest.raises(UserError, match=r"viz.digit must be a class of .*pets \(cat, dog\) or its index 0..1, "
                                        r"got 'horse'"):
        train(with_(cfg, viz={"digit": "horse"}, output={"dir": str(tmp_path / "other")}))


# Training, evaluating, exploring and the API at the data's own shape

@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_colour_images_train_evaluate_and_load_at_their_shape(tmp_path, arch):
    x = images_of(60, (3, 8, 12), 0).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "colour.npz", x=x, y=np.arange(60) % 3)
    model = {"arch": arch, "channels": (4, 8)} if arch == "conv" else {}
    cfg = run_cfg(tmp_path, DataConfig(dataset="npz", path=str(tmp_path / "colour.npz"), test_fraction=0.5), **model)
    result = train(cfg)
    metrics = evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=4"])
    assert metrics["image_shape"] == [3, 8, 12] and metrics["classes"] == ["0", "1", "2"]
    assert metrics["nll_iwae_bits_per_dim"] == pytest.approx(metrics["nll_iwae"] / (3 * 8 * 12) / np.log(2))
    for picture in ("recon.png", "samples.png", "digits.png", "interpolation.png", "traversal.png"):
        assert (result.run_dir / "eval" / picture).is_file()
    model = load(result.run_dir, device="cpu")
    assert model.shape == (3, 8, 12) and model.classes == ("0", "1", "2")
    assert model.sample(5).shape == (5, 3, 8, 12) and model.decode(torch.zeros(2, 3)).shape == (2, 3, 8, 12)
    channels_first = torch.from_numpy(x[:4]).permute(0, 3, 1, 2)
    out = model.reconstruct(x[:4])  # N x H x W x C in, the same layout out
    assert out.shape == (4, 8, 12, 3)
    torch.testing.assert_close(out.permute(0, 3, 1, 2), model.reconstruct(channels_first))
    torch.testing.assert_close(model.nll(x[:4], k=8), model.nll(channels_first.float() / 255, k=8))


def test_the_explorer_payload_carries_the_shape_and_an_unlabelled_folders_images(tmp_path):
    root = write_folder(tmp_path / "flat", {"": images_of(30, (1, 9, 7), 0)})
    result = train(run_cfg(tmp_path, DataConfig(dataset="folder", path=str(root))))
    evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=2"])
    data = json.loads((result.run_dir / "eval" / "explorer.json").read_text())
    assert data["shape"] == [1, 9, 7] and data["class_names"] == ["all"]
    assert len(data["examples"]) >= 2 and data["start"] != data["end"]
    assert (result.run_dir / "eval" / "digit0.png").is_file()  # viz.digit=2 means the one class there is


def test_conv_needs_sides_that_halve_evenly(tmp_path):
    np.savez(tmp_path / "odd.npz", x=images_of(20, (1, 9, 8), 0)[:, 0].numpy())
    cfg = run_cfg(tmp_path, DataConfig(dataset="npz", path=str(tmp_path / "odd.npz")), arch="conv", channels=(4, 8))
    with pytest.raises(UserError, match=r"model.arch=conv with 2 stages .* must be multiples of 2; these images "
                                        r"are 9x8: set data.image_size"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_on_images_of_another_size_is_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=images_of(20, (1, 6, 6), 0)[:, 0].numpy())
    cfg = run_cfg(tmp_path, DataConfig(dataset="npz", path=str(tmp_path / "a.npz")))
    run = train(with_(cfg, train={"epochs": 1})).run_dir
    np.savez(tmp_path / "a.npz", x=images_of(20, (1, 5, 5), 0)[:, 0].numpy())
    with pytest.raises(UserError, match=r"last.pt was trained on 6x6 images of 1 channel\(s\); the data now read is "
                                        r"5x5 of 1"):
        train(cfg, resume=run)
    with pytest.raises(UserError, match=r"last.pt was trained on 6x6 images"):
        evaluate_checkpoint(run, ["eval.iwae_samples=2"])


def test_the_data_path_is_the_data_so_resume_refuses_another(tmp_path):
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x=images_of(20, (1, 6, 6), 0)[:, 0].numpy())
    cfg = run_cfg(tmp_path, DataConfig(dataset="npz", path=str(tmp_path / "a.npz")))
    run = train(with_(cfg, train={"epochs": 1})).run_dir
    with pytest.raises(UserError, match=r"data.path"):
        train(with_(cfg, data={"path": str(tmp_path / "b.npz")}), resume=run)


def test_a_run_on_some_classes_of_your_images_named_in_its_config_resumes_with_that_config(tmp_path):
    root = write_folder(tmp_path / "pets", {name: images_of(10, (1, 4, 4), i)
                                            for i, name in enumerate(("cat", "dog", "fox"))})
    cfg = with_(run_cfg(tmp_path, DataConfig(dataset="folder", path=str(root), classes=("fox", "cat"),
                                             test_fraction=0.5)),
                viz={"digit": "fox"}, train={"epochs": 1})
    first = train(cfg)
    assert load(first.run_dir, device="cpu").config.data.classes == (2, 0)  # names stored as the indices they mean
    resumed = train(with_(cfg, train={"epochs": 2}), resume=first.run_dir)  # the names again: the same run
    assert [r["epoch"] for r in resumed.rows] == [1, 2]
    with pytest.raises(UserError, match="data.classes"):
        train(with_(cfg, data={"classes": ("dog",)}, viz={"digit": "dog"}, train={"epochs": 3}), resume=first.run_dir)
