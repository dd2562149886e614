"""comparison.html's figures, drawn into the comparison's folder: the rate-distortion plane, the rate split,
NLL against the swept key, and a search's own history and importance."""
from __future__ import annotations

from pathlib import Path

from vae.compare.table import label
from vae.evaluate.plots import plot_rate_distortion, plot_rate_split, plot_swept
from vae.sweep.report import draw_search


def marked(result: dict) -> str:
    """What the starred group is."""
    return "chosen on validation" if result["chosen"]["on"] == "validation" else "best test NLL"


def draw(result: dict, out: Path) -> list[tuple[Path, str]]:
    """Draw the figures that the groups call for; returns each PNG with its caption."""
    found, keys = result["groups"], result["differing_keys"]
    labels = [label(g["values"]) for g in found]
    plot_rate_distortion([g["rate"] for g in found], [g["distortion"] for g in found], labels,
                         result["chosen"]["group"], marked(result), out / "rate_distortion.png", result["front"])
    front = (" Ringed and joined: the search's Pareto front, the trials that no other trial dominates in "
             "validation rate and distortion, drawn at their evaluated numbers." if result["front"] else "")
    figures = [(out / "rate_distortion.png", "The rate-distortion plane: one point per config (error bars: the "
                f"standard deviation over seeds); the diagonals are equal negative ELBO D + R; starred: "
                f"{marked(result)}.{front}")]
    if all(g["mutual_information"] for g in found):
        plot_rate_split(labels, [g["mutual_information"]["mean"] for g in found],
                        [g["marginal_kl"]["mean"] for g in found], out / "rate_split.png")
        figures.append((out / "rate_split.png", "The rate split: I(x; z) (at most log N) and KL(q(z) ‖ p(z)), stacked"))
    if len(keys) == 1 and all(isinstance(g["values"][keys[0]], (int, float)) for g in found):
        plot_swept(keys[0], [g["values"][keys[0]] for g in found], [g["nll_iwae"] for g in found],
                   out / "nll_swept.png")
        figures.append((out / "nll_swept.png", f"NLL against {keys[0]}"))
    return figures + (draw_search(Path(result["sweep"]), out) if result.get("sweep") else [])
