from collections import Counter
from urllib.error import URLError

import pytest
import torch
from conftest import make_mnist, synthetic_digits, write_idx
from torchvision.datasets import MNIST

from vae.config.schema import CLASS_NAMES, DataConfig
from vae.data.load import load_data
from vae.data.mnist import load_dataset
from vae.data.split import Split
from vae.errors import UserError

CPU = torch.device("cpu")


def test_synthetic_idx_files_load_through_torchvision(mnist_root):
    train, test = load_dataset(mnist_root, download=False, device=CPU)
    images, labels = synthetic_digits(640, seed=0)
    assert train.images.dtype == torch.uint8 and train.images.shape == (640, 1, 28, 28)
    assert torch.equal(train.images[:, 0], images) and torch.equal(train.labels, labels)
    assert len(test) == 200


def test_pixels_are_flat_intensities_in_unit_interval(mnist_root):
    train, _ = load_dataset(mnist_root, download=False, device=CPU)
    x = train.pixels(torch.tensor([0, 5, 9]))
    assert x.shape == (3, 784) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5
    torch.testing.assert_close(x[1], train.images[5].flatten().float() / 255)


def test_missing_files_name_the_folder_searched(tmp_path):
    with pytest.raises(UserError, match=rf"not found in {tmp_path.resolve()}/MNIST/raw.*data.root"):
        load_dataset(tmp_path, download=False, device=CPU)


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(UserError, match=r"download failed.*Put train-images-idx3-ubyte"):
        load_dataset(tmp_path, download=True, device=CPU)
    monkeypatch.setattr(MNIST, "download", lambda self: (_ for _ in ()).throw(URLError("offline")))
    with pytest.raises(UserError, match="download failed"):
        load_dataset(tmp_path, download=True, device=CPU)


@pytest.mark.parametrize("dataset, folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_fashion_mnist_and_kmnist_read_their_own_folders_through_torchvision(tmp_path, dataset, folder):
    make_mnist(tmp_path, n_train=30, n_test=20, folder=folder)
    train, _, test = load_data(DataConfig(dataset=dataset, root=str(tmp_path), download=False), CPU)
    images, labels = synthetic_digits(30, seed=0)
    assert torch.equal(train.images[:, 0], images) and torch.equal(train.labels, labels) and len(test) == 20
    with pytest.raises(UserError, match=rf"{folder} files not found in {tmp_path.resolve()}/elsewhere/{folder}/raw .*"
                                        rf"missing train-images-idx3-ubyte.*holding {folder}/raw/"):
        load_data(DataConfig(dataset=dataset, root=str(tmp_path / "elsewhere"), download=False), CPU)
    with pytest.raises(UserError, match="MNIST files not found"):  # the MNIST files are not Fashion-MNIST's
        load_data(DataConfig(dataset="mnist", root=str(tmp_path), download=False), CPU)


def test_class_names_are_torchvisions():
    from torchvision.datasets import KMNIST, FashionMNIST
    assert CLASS_NAMES["fashion_mnist"] == tuple(FashionMNIST.classes)
    assert CLASS_NAMES["kmnist"] == tuple(KMNIST.classes)
    assert CLASS_NAMES["mnist"] == tuple(c.split(" - ")[0] for c in MNIST.classes)  # "0 - zero" -> "0"


@pytest.mark.parametrize("damage", ["truncate", "magic", "count"])
def test_corrupt_files_are_reported_not_raised(tmp_path, damage):
    raw = make_mnist(tmp_path, n_train=30, n_test=20) / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:5000])
    elif damage == "magic":
        images.write_bytes(b"\x00\x00\x07\x03" + images.read_bytes()[4:])
    else:
        write_idx(raw / "train-labels-idx1-ubyte", torch.zeros(29, dtype=torch.uint8))
    with pytest.raises(UserError, match="MNIST"):
        load_dataset(tmp_path, download=False, device=CPU)


def test_binarized_pixels_are_bernoulli_draws_of_the_intensities():
    images = torch.full((2000, 1, 28, 28), 64, dtype=torch.uint8)
    images[:, :, :14] = 255
    split = Split(images, torch.zeros(2000, dtype=torch.long), ("all",))
    a, b = split.binarized(seed=1), split.binarized(seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, split.binarized(seed=2).images)
    x = a.pixels(torch.arange(2000))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert x[:, :14 * 28].min() == 1  # intensity 1 is always on
    assert x[:, 14 * 28:].mean().item() == pytest.approx(64 / 255, abs=0.003)


def test_dynamic_binarization_fixes_the_test_set_and_static_the_training_set_too(mnist_root):
    plain_train, plain_test = load_dataset(mnist_root, download=False, device=CPU)
    dyn_train, dyn_val, dyn_test = load_data(DataConfig(root=str(mnist_root), download=False, binarize="dynamic"), CPU)
    st_train, _, st_test = load_data(DataConfig(root=str(mnist_root), download=False, binarize="static"), CPU)
    assert dyn_val is None  # data.val_size=0
    assert torch.equal(dyn_train.images, plain_train.images)  # drawn anew at each use, in the training loop
    assert torch.equal(dyn_test.images, st_test.images)  # one binarized test set for both protocols
    assert set(st_train.images.unique().tolist()) == set(st_test.images.unique().tolist()) == {0, 255}
    other_seed = load_data(DataConfig(root=str(mnist_root), download=False, binarize="dynamic", seed=1), CPU).test
    assert not torch.equal(other_seed.images, dyn_test.images)
    assert torch.equal(load_data(DataConfig(root=str(mnist_root), download=False), CPU).test.images, plain_test.images)


def test_the_validation_split_is_held_out_of_the_training_images(mnist_root):
    plain_train, _ = load_dataset(mnist_root, download=False, device=CPU)
    train, val, _ = load_data(DataConfig(root=str(mnist_root), download=False, val_size=100), CPU)
    assert (len(train), len(val)) == (540, 100)
    def rows(split):
        return Counter(bytes(img.flatten().tolist()) + bytes([lab]) for img, lab in zip(split.images, split.labels))
    assert rows(train) + rows(val) == rows(plain_train)  # every image in exactly one of them
    again = load_data(DataConfig(root=str(mnist_root), download=False, val_size=100), CPU).val
    other = load_data(DataConfig(root=str(mnist_root), download=False, val_size=100, seed=1), CPU).val
    assert torch.equal(again.images, val.images) and not torch.equal(other.images, val.images)
    # binarized like the test set: drawn once, the same in every run
    dyn = load_data(DataConfig(root=str(mnist_root), download=False, val_size=100, binarize="dynamic"), CPU)
    assert set(dyn.val.images.unique().tolist()) == {0, 255} and torch.equal(dyn.val.labels, val.labels)
    assert torch.equal(dyn.train.images, train.images)  # resampled in the training loop


def test_a_validation_split_as_big_as_the_training_set_is_refused(mnist_root):
    with pytest.raises(UserError, match=r"data.val_size=640 leaves no training images: 640 of 640 held out"):
        load_data(DataConfig(root=str(mnist_root), download=False, val_size=640), CPU)
