"""How well the scores of `evaluate.py --against` tell new data from the training data, on the genuine MNIST.

    python -m bench.novelty --data ../shared/data [--minutes 3] [--out outputs/novelty] [--digits 0,1,...]

- Leave one digit out: for each digit d, mnist_cpu_hour trained for `--minutes` on the nine others (5,000 training
  images held out for validation); the scores' settings (the compressor of `complexity`) and the score to quote are
  chosen on validation data (the validation split against the training file's images of d), then the test images
  of d are scored against the test images of the others: each score's AUROC, AUPR and FPR at 95% TPR.
- Transformed test sets: the same config on every digit, its test images against 2,000 of them flipped, inverted,
  turned, replaced by uniform noise or by one grey level each.
- The dataset-level test: false alarms at α = 0.05 over 200 draws of 100 test images of one random half of the test
  set against 1,000 of the other half (the all-digit model); power, per held-out digit: the detection rate of
  draws of n of its test images against the others', and the smallest n detected in >= 95% of 100 draws.

Each run and each digit's numbers are kept under --out (train runs resume, finished parts are read back), so a second
call after an interruption goes on where the first stopped. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from vae.config.load import load_config
from vae.data.split import Split
from vae.errors import UserError
from vae.evaluate.analyze import fixed_split, load_evaluated
from vae.evaluate.heldout import encode_split
from vae.files import atomic_write_text
from vae.novelty.datasets import mmd_test
from vae.novelty.scores import Reference, compressed_bits, score_split
from vae.novelty.separation import separation
from vae.novelty.sources import new_data
from vae.run.layout import last_pt
from vae.train.loop import train

CONFIG = "mnist_cpu_hour"
SCORES = ("nll", "rate", "complexity", "typicality", "regret", "kl_to_reference")
COMPRESSORS = ("png", "bz2", "zlib")
TRANSFORMS = ("hflip", "vflip", "rot90", "invert", "noise", "constant")
SIZES = (2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)  # the draws' sizes n of the power curve
DRAWS, NULL_DRAWS, PERMUTATIONS, TEST_REFERENCE = 100, 200, 200, 1000


def trained(data: str, out: Path, minutes: float, held_out: int | None) -> Path:
    """A run of CONFIG on every digit but `held_out` (all ten for None), trained or continued to its budget."""
    kept = [d for d in range(10) if d != held_out]
    overrides = [f"data.root={data}", "data.val_size=5000", f"data.classes={kept}", f"viz.digit={kept[0]}",
                 f"train.budget_minutes={minutes}", "viz.every=1000", f"output.dir={out}"]
    cfg = load_config(CONFIG, overrides)
    try:
        train(cfg, resume=out if last_pt(out).is_file() else None)
    except UserError as e:  # a finished run: nothing left to do
        if "nothing to do" not in str(e):
            raise
    return out


def subset(split: Split, n: int, seed: int) -> Split:
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n])


def scored(loaded, split: Split, reference: Reference | None) -> tuple[dict, Reference]:
    """Every score of `split` (with the complexity of each compressor; against `reference`, else as the reference's
    own images), and what new images' scores need of it as a reference."""
    post = encode_split(loaded.model, split, loaded.cfg.eval.seed)
    scores = score_split(loaded.model, split, post, reference or Reference(post), loaded.cfg, SCORES,
                         is_reference=reference is None)
    bits = {c: compressed_bits(split.images, c, binary=True) for c in COMPRESSORS}
    scores.update({f"complexity_{c}": scores["nll"] - b * math.log(2) for c, b in bits.items()})
    return scores, Reference(post, scores["nll"].mean().item())


def aurocs(ref: dict, new: dict) -> dict:
    return {name: separation(ref[name].numpy(), new[name].numpy()) for name in ref}


def leave_one_out(data: str, out: Path, minutes: float, digit: int) -> dict:
    """Validation and test separation of digit `digit` by a model trained on the others, and the test's power."""
    saved = out / f"digit{digit}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    run = trained(data, out / f"without{digit}", minutes, digit)
    result = {"epochs": None}
    for reference in ("val", "test"):
        loaded = load_evaluated(run, ["train.device=cpu", f"score.reference={reference}"])
        cfg = loaded.cfg
        ref = fixed_split(loaded.splits, cfg, reference)
        new = new_data(cfg, "heldout", None, ref.shape, loaded.device)
        new = subset(new, 1000, cfg.eval.seed) if reference == "val" else new
        ref_scores, as_reference = scored(loaded, ref, None)
        new_scores, new_side = scored(loaded, new, as_reference)
        result[reference] = aurocs(ref_scores, new_scores)
        result[f"{reference}_images"] = [len(ref), len(new)]
        if reference == "test":
            result["power"] = power(as_reference.post.mu, new_side.post.mu, cfg.eval.seed)
        result["epochs"] = loaded.state["epoch"]
    atomic_write_text(saved, json.dumps(result, indent=1))
    return result


def power(ref_codes: torch.Tensor, new_codes: torch.Tensor, seed: int) -> dict:
    """The share of DRAWS draws of n new codes that the MMD test (against TEST_REFERENCE reference codes) finds
    different at α = 0.05, for each n of SIZES."""
    gen = torch.Generator().manual_seed(seed)
    ref = ref_codes[torch.randperm(len(ref_codes), generator=gen)[:TEST_REFERENCE]]
    rates = {}
    for n in SIZES:
        hits = [mmd_test(new_codes[torch.randperm(len(new_codes), generator=gen)[:n]], ref, PERMUTATIONS,
                         seed + i)["p_value"] < 0.05 for i in range(DRAWS)]
        rates[n] = float(np.mean(hits))
        if rates[n] == 1.0:
            break
    return rates


def all_digits(data: str, out: Path, minutes: float) -> dict:
    """The transformed test sets and the test's false alarms, with a model of every digit."""
    saved = out / "all.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    loaded = load_evaluated(trained(data, out / "all", minutes, None), ["train.device=cpu"])
    cfg = loaded.cfg
    test = fixed_split(loaded.splits, cfg, "test")
    ref_scores, as_reference = scored(loaded, test, None)
    result = {"epochs": loaded.state["epoch"], "transforms": {}}
    for transform in TRANSFORMS:
        new = subset(new_data(cfg, "test", transform, test.shape, loaded.device), 2000, cfg.eval.seed)
        result["transforms"][transform] = aurocs(ref_scores, scored(loaded, new, as_reference)[0])
    # two random halves: the test file's own halves differ (its first 5,000 images come from other writers than the
    # last 5,000), which this test detects
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    first, second = as_reference.post.mu[torch.randperm(len(test), generator=gen)].tensor_split(2)
    ref = first[:TEST_REFERENCE]
    p = [mmd_test(second[torch.randperm(len(second), generator=gen)[:100]], ref, PERMUTATIONS, i)["p_value"]
         for i in range(NULL_DRAWS)]
    result["false_alarms"] = {"rate": float(np.mean(np.array(p) < 0.05)), "draws": NULL_DRAWS}
    atomic_write_text(saved, json.dumps(result, indent=1))
    return result


def table(rows: dict[str, dict], metric: str, names) -> str:
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    return head + "".join(f"| {row} | " + " | ".join(f"{r[n][metric]:.3f}" for n in names) + " |\n"
                          for row, r in rows.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("outputs/novelty"))
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lodo = {d: leave_one_out(args.data, args.out, args.minutes, d) for d in map(int, args.digits.split(","))}
    every = (*SCORES, *(f"complexity_{c}" for c in COMPRESSORS))
    val = {f"digit {d}": r["val"] for d, r in lodo.items()}
    val["mean"] = {n: {"auroc": float(np.mean([r[n]["auroc"] for r in val.values()]))} for n in every}
    compressor = max(COMPRESSORS, key=lambda c: val["mean"][f"complexity_{c}"]["auroc"])
    chosen = [*SCORES[:2], f"complexity_{compressor}", *SCORES[3:]]
    best = max(chosen, key=lambda n: val["mean"][n]["auroc"])
    print(f"## Leave one digit out ({CONFIG}, {args.minutes:g} minutes each; epochs "
          f"{', '.join(str(r['epochs']) for r in lodo.values())})\n")
    print("Validation AUROC (each compressor):\n\n" + table(val, "auroc", every))
    print(f"Chosen on validation: compressor {compressor}; the best score {best}.\n")
    test = {f"digit {d}": r["test"] for d, r in lodo.items()}
    test["mean"] = {n: {m: float(np.mean([r[n][m] for r in test.values()])) for m in ("auroc", "aupr", "fpr_at_95_tpr")}
                    for n in chosen}
    for metric in ("auroc", "aupr", "fpr_at_95_tpr"):
        print(f"Test {metric}:\n\n" + table(test, metric, chosen))
    print("Power of the MMD test (share of 100 draws of n held-out test images found different at α = 0.05, against "
          f"{TEST_REFERENCE} test images of the others):\n")
    for d, r in lodo.items():
        curve = {int(n): v for n, v in r["power"].items()}
        smallest = next((n for n, v in curve.items() if v >= 0.95), None)
        print(f"- digit {d}: smallest n with >= 95%: {smallest}; " + ", ".join(f"n={n}: {v:.2f}"
                                                                               for n, v in curve.items()))
    everything = all_digits(args.data, args.out, args.minutes)
    print(f"\n## Transformed test sets (every digit, {everything['epochs']} epochs)\n")
    print(table(everything["transforms"], "auroc", chosen))
    fa = everything["false_alarms"]
    print(f"False alarms at α = 0.05: {fa['rate']:.3f} of {fa['draws']} draws of 100 test images.")


if __name__ == "__main__":
    main()
