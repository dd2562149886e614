"""What an epoch prints: the posterior-collapse warning and its remedies."""
from vae.train.epoch_report import collapse_warning


def test_collapse_warning_names_the_numbers_and_the_remedies():
    healthy = {"epoch": 1, "test_kl": 20.0, "test_active_units": 12}
    assert collapse_warning([healthy]) is None
    dead = collapse_warning([healthy, {"epoch": 2, "test_kl": 0.01, "test_active_units": 0}])
    assert "epoch 2" in dead and "0 active units" in dead and "warm-up" in dead and "free bits" in dead
    iwae = collapse_warning([healthy, {"epoch": 2, "test_kl": 0.01, "test_active_units": 0}], iwae=True)
    assert "loss.kl_warmup_epochs" in iwae and "loss.free_bits" not in iwae and "loss.iwae_k=1" in iwae
    low = [{"epoch": e, "test_kl": 0.4, "test_active_units": 1} for e in (1, 2, 3)]
    assert collapse_warning(low[:2]) is None and "rate 0.400 nats" in collapse_warning(low)


def test_collapse_warning_sees_the_top_layer_of_two():
    rows = [{"epoch": e, "test_kl": 20.0, "test_kl_z2": z2, "test_active_units": 12}
            for e, z2 in enumerate((0.5, 2.0, 0.3, 0.2, 0.1), start=1)]
    assert collapse_warning(rows[:4]) is None  # epoch 2 carried 2 nats
    warning = collapse_warning(rows)
    assert "top stochastic layer" in warning and "epoch 5" in warning and "0.100 nats" in warning
    assert "loss.kl_warmup_epochs" in warning
