from pathlib import Path

import pytest
from conftest import REPO

from vae.config.load import from_dict, load_config, to_dict
from vae.config.schema import Config, ModelConfig, TrainConfig
from vae.errors import UserError


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_classic_example():
    cfg = Config()
    assert cfg.model.hidden_dims == (400,) and cfg.model.latent_dim == 20
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.epochs) == (128, 1e-3, 10)


def test_file_then_overrides_then_output_dir_from_config_name(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr: 1.0e-2\nmodel:\n  latent_dim: 8\n")
    cfg = load_config(path, ["train.lr=3e-4", "model.hidden_dims=[512, 256]"])
    assert cfg.train.epochs == 3 and cfg.model.latent_dim == 8
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.hidden_dims == (512, 256)
    assert cfg.output.dir == "outputs/exp"
    assert cfg.train.batch_size == 128  # untouched default


def test_explicit_output_dir_wins(tmp_path):
    cfg = load_config(write(tmp_path, "{}"), ["output.dir=/tmp/elsewhere"])
    assert cfg.output.dir == "/tmp/elsewhere"


def test_round_trip_through_plain_data():
    cfg = Config(model=ModelConfig(hidden_dims=(7, 5), latent_dim=3), train=TrainConfig(lr=0.5))
    assert from_dict(to_dict(cfg)) == cfg
    assert to_dict(cfg)["model"]["hidden_dims"] == [7, 5]


@pytest.mark.parametrize("source, key, suggestion", [
    ("file", "train:\n  ephocs: 3\n", "train.epochs"),
    ("override", "train.learning_rate=0.1", None),
    ("override", "model.latent=4", "model.latent_dim"),
    ("file", "trian:\n  epochs: 3\n", "train"),
])
def test_unknown_key_is_named_with_closest_valid_one(tmp_path, source, key, suggestion):
    path = write(tmp_path, key if source == "file" else "{}")
    with pytest.raises(UserError, match="unknown config key") as e:
        load_config(path, [key] if source == "override" else [])
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(e.value)
    else:
        assert "valid keys" in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "train.epochs must be int"),
    ("train.epochs=2.5", "train.epochs must be int"),
    ("train.batch_size=true", "train.batch_size must be int"),
    ("model.hidden_dims=5", "model.hidden_dims must be a list"),
    ("model.hidden_dims=[64, x]", r"model.hidden_dims\[1\] must be int"),
    ("data.download=yes please", "data.download must be bool"),
    ("train.lr=fast", "train.lr must be float"),
    ("train.device=[cuda]", "train.device must be str"),
])
def test_wrong_types_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=-3", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("model.latent_dim=0", "model.latent_dim"),
    ("model.latent_dim=1000000000000", "model.latent_dim"),
    ("model.hidden_dims=[0]", "model.hidden_dims"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=-1e-3", "train.lr"),
    ("train.lr=1e999", "train.lr"),
    ("train.seed=-1", "train.seed"),
    ("train.device=tpu", "train.device"),
    ("viz.digit=10", "viz.digit"),
    ("viz.digit=2.5", "viz.digit"),
    ("viz.digit=seven", "viz.digit"),
    ("data.dataset=emnist", "data.dataset"),
    ("loss.gradient=sgd", "loss.gradient"),
    ("model.output_bias_init=zeros", "model.output_bias_init"),
    ("viz.every=0", "viz.every"),
    ("train.precision=fp16", "train.precision"),
    ("train.threads=0", "train.threads"),
    ("train.threads=many", "train.threads"),
    ("train.threads=true", "train.threads"),
    ("train.compile=1", "train.compile"),
    ("train.compile=sometimes", "train.compile"),
    ("data.binarize=yes", "data.binarize"),
    ("data.seed=-1", "data.seed"),
    ("model.activation=sigmoid", "model.activation"),
    ("train.lr_schedule=step", "train.lr_schedule"),
    ("train.lr_decay_to=0", "train.lr_decay_to"),
    ("train.lr_decay_to=2", "train.lr_decay_to"),
    ("loss.beta=-1", "loss.beta"),
    ("loss.free_bits=.inf", "loss.free_bits"),
    ("loss.kl_warmup_epochs=-2", "loss.kl_warmup_epochs"),
    ("loss.iwae_k=0", "loss.iwae_k"),
    ("data.val_size=-1", "data.val_size"),
    ("model.arch=resnet", "model.arch"),
    ("model.channels=[8,8,8,8,8,8,8]", "model.channels"),
    ("model.channels=[]", "model.channels"),
    ("model.res_blocks=-1", "model.res_blocks"),
    ("train.patience=-1", "train.patience"),
    ("train.budget_minutes=-5", "train.budget_minutes"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("train.ema_decay=-0.1", "train.ema_decay"),
    ("train.ema_decay=.nan", "train.ema_decay"),
    ("train.budget_minutes=.nan", "train.budget_minutes"),
])
def test_impossible_values_are_refused_naming_the_key(override, key):
    with pytest.raises(UserError, match=rf"^{key} must"):
        load_config(None, [override])


def test_a_time_budget_refuses_burdas_schedule_of_fixed_epoch_counts():
    assert load_config(None, ["train.budget_minutes=30", "train.lr_schedule=cosine"]).train.budget_minutes == 30.0
    with pytest.raises(UserError, match=r"^train.budget_minutes cannot time Burda's schedule"):
        load_config(None, ["train.budget_minutes=30", "train.lr_schedule=burda"])


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train.epochs 3"])
def test_malformed_override_is_refused(override):
    with pytest.raises(UserError, match="must look like section.key=value|unknown config key"):
        load_config(None, [override])


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: [1, 2\n", r"not valid YAML.*line \d+"),
    ("a: &x [1]\nb: *x\n", "aliases are not allowed"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("train: 5\n", "section 'train' must be a mapping"),
])
def test_malformed_files_are_refused(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, text), [])


def test_absurdly_nested_yaml_is_refused_not_a_crash(tmp_path):
    with pytest.raises(UserError, match="nested too deeply"):
        load_config(write(tmp_path, "train: " + "[" * 5000 + "]" * 5000), [])
    with pytest.raises(UserError, match="nested too deeply"):
        load_config(None, ["model.hidden_dims=" + "[" * 5000 + "]" * 5000])


def test_paths_may_be_numbers_and_spaces_around_keys_are_ignored():
    cfg = load_config(None, ["output.dir=2024", " data.root =/x"])
    assert cfg.output.dir == "2024" and cfg.data.root == "/x"


def test_binary_and_missing_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="not a text"):
        load_config(garbage, [])
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", [])


def test_an_empty_file_is_refused_and_an_empty_mapping_is_the_defaults(tmp_path):
    with pytest.raises(UserError, match="is empty; write {} for a config that keeps every default"):
        load_config(write(tmp_path, "# nothing but a comment\n"), [])
    assert load_config(write(tmp_path, "{}"), []) == load_config(None, ["output.dir=outputs/exp"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path, [])
    assert cfg.output.dir == f"outputs/{path.stem}"


def test_early_stopping_and_validation_evaluation_need_a_validation_split():
    assert load_config(None, ["data.val_size=100", "train.patience=3", "eval.split=val"]).train.patience == 3
    with pytest.raises(UserError, match=r"^train.patience needs data.val_size > 0"):
        load_config(None, ["train.patience=3"])
    with pytest.raises(UserError, match=r"^eval.split needs data.val_size > 0"):
        load_config(None, ["eval.split=val"])


def test_the_iwae_objective_refuses_beta_and_free_bits_but_takes_warmup():
    assert load_config(None, ["loss.iwae_k=50", "loss.kl_warmup_epochs=10"]).loss.kl_warmup_epochs == 10
    for other in ("loss.beta=0.5", "loss.free_bits=0.5"):
        with pytest.raises(UserError, match="loss.iwae_k > 1 is the IWAE bound"):
            load_config(None, ["loss.iwae_k=50", other])


def test_viz_digit_takes_a_class_name_of_the_dataset_and_keeps_its_index():
    assert load_config(None, ["data.dataset=fashion_mnist", "viz.digit=trouser"]).viz.digit == 1  # any case
    assert load_config(None, ["data.dataset=kmnist", "viz.digit=tsu"]).viz.digit == 3
    assert load_config(None, ["viz.digit='7'"]).viz.digit == 7  # a quoted digit is MNIST's class name
    cfg = load_config(None, ["data.dataset=fashion_mnist", "viz.digit=Ankle boot"])
    assert to_dict(cfg)["viz"]["digit"] == 9


@pytest.mark.parametrize("overrides, message", [
    (["loss.gradient=dreg", "loss.free_bits=0.5"], "dreg takes no free bits"),
    (["loss.gradient=dreg", "model.latent2_dim=4"], "dreg is built for one stochastic layer"),
    (["model.output_bias_init=pixel_means", "model.arch=conv"], "pixel_means needs model.arch=mlp"),
])
def test_options_that_do_not_go_together_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["loss.gradient=dreg", "loss.iwae_k=5", "model.output_bias_init=pixel_means"])
