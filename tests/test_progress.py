import pytest
import torch

from vae.errors import UserError
from vae.train.progress import EpochProgress


def begin(n, seed):
    return EpochProgress.begin(n, torch.Generator().manual_seed(seed))


def test_an_epoch_covers_every_example_once_with_a_short_last_batch():
    got = begin(10, 0).remaining(4)
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(torch.cat(got).tolist()) == list(range(10))


def test_the_order_follows_the_generator():
    assert torch.equal(begin(100, 1).order, begin(100, 1).order)
    assert not torch.equal(begin(100, 1).order, begin(100, 2).order)


def test_progress_continues_after_a_round_trip_through_its_state():
    progress = begin(10, 0)
    for batch in progress.remaining(4)[:2]:
        progress.record(len(batch), torch.tensor([3.0, 2.0, 1.0]) * len(batch), torch.tensor(0.5))
    progress.merge()
    again = EpochProgress.from_state(progress.state(), torch.device("cpu"))
    assert again.step == 2 and again.seen == 8
    assert [b.tolist() for b in again.remaining(4)] == [progress.order[8:].tolist()]
    assert again.means() == {"loss": 3.0, "recon": 2.0, "kl": 1.0}


@pytest.mark.parametrize("nats, logvar_sum, named", [
    ([float("nan"), float("nan"), 1.0], 0.0, "reconstruction not finite"),
    ([float("inf"), 1.0, float("inf")], float("inf"), "KL, logvar not finite"),
])
def test_a_non_finite_step_is_named_with_its_step_and_term(nats, logvar_sum, named):
    progress = begin(10, 0)
    progress.record(4, torch.tensor([1.0, 1.0, 1.0]), torch.tensor(0.0))
    progress.check_finite(epoch=3)
    progress.record(4, torch.tensor(nats), torch.tensor(logvar_sum))
    progress.record(2, torch.tensor([1.0, 1.0, 1.0]), torch.tensor(0.0))
    with pytest.raises(UserError, match=f"diverged at epoch 3, step 2: {named}"):
        progress.check_finite(epoch=3)
