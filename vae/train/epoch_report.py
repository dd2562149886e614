"""What each epoch prints: its summary line, and a warning when the posterior collapses."""
from __future__ import annotations

COLLAPSE_RATE_NATS = 1.0  # a test rate below this for COLLAPSE_EPOCHS epochs in a row is collapse
COLLAPSE_EPOCHS = 3


def epoch_line(row: dict, epochs: int, is_best: bool) -> str:
    """One line of a metrics row: the negative ELBO of each split, the test split's terms and active units."""
    return (f"epoch {row['epoch']:3d}/{epochs}  train {row['train_loss']:8.3f}  "
            + (f"val {row['val_loss']:8.3f}  " if "val_loss" in row else "")
            + f"test {row['test_loss']:8.3f} (recon {row['test_recon']:7.3f} + KL {row['test_kl']:6.3f}"
            + (f", z2 {row['test_kl_z2']:6.3f}" if "test_kl_z2" in row else "") + ") "
            f"nats/example  {row['test_active_units']:3d} active units  {row['seconds']:5.1f}s"
            + ("  *best" if is_best else ""))


def collapse_warning(rows: list[dict], iwae: bool = False) -> str | None:
    """One line when metrics rows show posterior collapse: no active unit, or a rate stuck near 0;
    with two stochastic layers also when z2's part of the rate alone is stuck near 0. The remedies
    named are those the objective takes: the IWAE bound (iwae=True) has no beta or free bits."""
    last, recent = rows[-1], rows[-COLLAPSE_EPOCHS:]

    def stuck(key: str) -> bool:
        rates = [r[key] for r in recent if key in r]
        return len(rates) == COLLAPSE_EPOCHS and max(rates) < COLLAPSE_RATE_NATS

    if last["test_active_units"] == 0 or stuck("test_kl"):
        return (f"warning: posterior collapse at epoch {last['epoch']}: {last['test_active_units']} active "
                f"units, test rate {last['test_kl']:.3f} nats (collapse: no active unit, or a rate under "
                f"{COLLAPSE_RATE_NATS} for {COLLAPSE_EPOCHS} epochs); the decoder is ignoring z. "
                + ("Try a KL warm-up (loss.kl_warmup_epochs) or a weaker decoder; free bits and beta "
                   "need loss.iwae_k=1" if iwae else
                   "Try a KL warm-up (loss.kl_warmup_epochs), free bits (loss.free_bits), a smaller "
                   "loss.beta or a weaker decoder"))
    if stuck("test_kl_z2"):
        return (f"warning: the top stochastic layer has collapsed at epoch {last['epoch']}: z2 carries "
                f"{last['test_kl_z2']:.3f} nats of the test rate (under {COLLAPSE_RATE_NATS} for "
                f"{COLLAPSE_EPOCHS} epochs); p(z1|z2) is ignoring z2. Train again with a KL warm-up "
                f"(loss.kl_warmup_epochs, for either objective)")
    return None
