"""The comparison's numbers: which keys differ, seed groups as mean ± std, the chosen group, the CSV."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from vae.config.load import to_dict
from vae.config.schema import NOT_COMPARED, Config
from vae.files import atomic_write_text

# (metrics key, heading): the numbers compared, in nats per example unless named otherwise
COLUMNS = (("negative_elbo", "−ELBO"), ("distortion", "distortion"), ("rate", "rate"),
           ("nll_iwae", "NLL"), ("inference_gap", "inference gap"), ("active_units", "active units"),
           ("mutual_information", "I(x; z)"), ("marginal_kl", "KL(q(z) ‖ p(z))"), ("epochs", "epochs"),
           ("seconds", "seconds"), ("best_val", "validation −ELBO (best epoch)"))
def flat(config: dict) -> dict:
    return {f"{s}.{k}": v for s, keys in config.items() for k, v in keys.items()}


def differing_keys(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run (but train.seed), in config order."""
    keys = [k for k in rows[0]["config"] if k not in NOT_COMPARED and k != "train.seed"]
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in rows}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def groups(rows: list[dict], keys: list[str]) -> list[dict]:
    """Runs that differ only in train.seed, with each number's mean and standard deviation over them."""
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(json.dumps([row["config"].get(k) for k in keys]), []).append(row)
    out = []
    for members in found.values():
        stats = {}
        for key, _ in COLUMNS:
            values = [m[key] for m in members if m[key] is not None]
            stats[key] = dict(zip(("mean", "std"), mean_std(values))) if values else None
        out.append({"values": {k: members[0]["config"].get(k) for k in keys}, "runs": [m["run"] for m in members],
                    "unfinished": sum(not m["finished"] for m in members),
                    "seeds": [m["config"].get("train.seed") for m in members], **stats})
    return out


def plain(value, unset: str = "") -> str:
    """A config value as a person reads it in a table or a spreadsheet cell (normal, 0.5, true, [32, 16]),
    not as JSON ("normal"); `unset` for None."""
    if value is None:
        return unset
    if isinstance(value, bool):
        return "true" if value else "false"  # as the config's YAML spells them
    if isinstance(value, (list, tuple)):  # bracketed, so that no spreadsheet reads 32,16 as a decimal number
        return f"[{', '.join(plain(v, unset) for v in value)}]"
    return str(value)


def label(values: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={plain(v, 'unset')}" for k, v in values.items()) or "all runs"


def write_csv(path: Path, rows: list[dict], keys: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", *keys, "train.seed", "finished", *(key for key, _ in COLUMNS)])
    for r in rows:
        writer.writerow([r["run"], *(plain(r["config"].get(k)) for k in keys), r["config"].get("train.seed"),
                         plain(r["finished"]),
                         *("" if r[key] is None else r[key] for key, _ in COLUMNS)])
    atomic_write_text(path, buf.getvalue())


def cell(stat: dict | None, key: str, spread: str = "std", sign: str = "") -> str:
    """mean ± std (or another spread), to 3 decimals (whole numbers for counts)."""
    if stat is None:
        return "—"
    digits = 0 if key in ("active_units", "epochs") else 1 if key == "seconds" else 3
    return f"{stat['mean']:{sign}.{digits}f}" + (f" ± {stat[spread]:.{digits}f}" if stat[spread] else "")


# (metrics key, heading): NLL = distortion + rate - gap, the rate split further where it is defined
MOVED = (("nll_iwae", "Δ NLL"), ("distortion", "Δ distortion"), ("rate", "Δ rate"),
         ("mutual_information", "Δ I(x; z)"), ("marginal_kl", "Δ KL(q(z) ‖ p(z))"), ("inference_gap", "Δ gap"))


def reference(found: list[dict], keys: list[str]) -> int:
    """The group the others are measured against: the one at the config's defaults (e.g. prior normal,
    posterior gaussian), else the first."""
    defaults = flat(to_dict(Config()))
    return next((i for i, g in enumerate(found) if all(g["values"][k] == defaults.get(k) for k in keys)), 0)


def moved(found: list[dict], ref: int) -> list[dict]:
    """Each group's change of NLL against group `ref`, term by term: Δ NLL = Δ distortion + Δ rate - Δ gap
    (to the Monte Carlo noise of the two ELBO estimates), Δ rate = Δ I(x; z) + Δ KL(q(z) ‖ p(z)) where both
    rate splits are defined; each the difference of the means and its standard error over the seeds,
    sqrt(s_a^2 / n_a + s_b^2 / n_b) (0 with one seed a side: unknown); None where a term is not defined."""
    def delta(g: dict, key: str) -> dict | None:
        a, b = g[key], found[ref][key]
        if a is None or b is None:
            return None
        se = math.sqrt(a["std"] ** 2 / len(g["runs"]) + b["std"] ** 2 / len(found[ref]["runs"]))
        return {"mean": a["mean"] - b["mean"], "se": se}
    return [{key: delta(g, key) for key, _ in MOVED} for g in found]


def chosen(found: list[dict]) -> tuple[int, str]:
    """The group to pick, and on what: the best validation loss when every run has a validation split
    (the test numbers of that group are then honest), else the best test NLL (which flatters it)."""
    if all(g["best_val"] for g in found):
        return min(range(len(found)), key=lambda i: found[i]["best_val"]["mean"]), "validation"
    return min(range(len(found)), key=lambda i: found[i]["nll_iwae"]["mean"]), "test"
