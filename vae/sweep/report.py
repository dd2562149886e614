"""What a sweep tells when it ends and what a comparison reads from its study, which it never makes or marks:
the trials' summary, a search's Pareto front, and Optuna's figures of a search."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from vae.cli import invoked_as
from vae.errors import UserError
from vae.sweep.spec import Sweep, load, run_dir
from vae.sweep.storage import experimental
from vae.sweep.study import open_study, plain_study


def summary(sweep_dir: Path) -> str:
    """Counts of the trials by state, and the best one (by its best.pt loss)."""
    sweep = load(sweep_dir)
    study = open_study(sweep, sweep_dir)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): n for s in TrialState if (n := sum(t.state == s for t in trials))}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    lines = [f"{len(done)} of {sweep.size()} trials complete ({', '.join(f'{n} {s}' for s, n in counts.items())})"]
    for t in trials:
        if t.state == TrialState.FAIL and "duplicate_of" in t.user_attrs:
            lines.append(f"  trial {t.number} was not trained: trial {t.user_attrs['duplicate_of']} has its grid point")
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            lines.append(f"  trial {t.number} failed: {t.user_attrs['error']}")
        elif t.state == TrialState.FAIL and "requeued_because" in t.user_attrs:
            lines.append(f"  trial {t.number} was stopped by the machine and queued again: "
                         f"{t.user_attrs['requeued_because']}")

    def where(t: optuna.trial.FrozenTrial) -> object:
        return run_dir(sweep_dir, t.user_attrs["run"]) if "run" in t.user_attrs else f"trial {t.number}"
    if done and sweep.two_objectives:
        lines.append("the Pareto front on validation (the trials no other trial dominates in rate and distortion):")
        lines += [f"  {where(t)}: rate {t.values[0]:.3f}, distortion {t.values[1]:.3f} nats"
                  for t in sorted(study.best_trials, key=lambda t: t.values[0])]
    elif done:
        best = min(done, key=lambda t: t.value)
        chosen_on = "validation" if sweep.base.data.val_size else "test"
        lines.append(f"best: {where(best)} ({chosen_on} loss {best.value:.3f} nats)")
    lines.append(f"compare the runs: {invoked_as('evaluate')} --compare {sweep_dir}")
    return "\n".join(lines)


def search_study(sweep_dir: Path, missing: str) -> tuple[Sweep, optuna.Study | None]:
    """A sweep and, for a search, its study, read only (a comparison never makes or marks a study); None for
    a grid, or with a warning that `missing` is not drawn when the study cannot be opened."""
    sweep = load(sweep_dir)
    if not sweep.search:
        return sweep, None
    try:
        return sweep, plain_study(sweep, sweep_dir)
    except (UserError, KeyError) as e:
        print(f"warning: no {missing}: {e}", file=sys.stderr)
        return sweep, None


def front_runs(sweep_dir: Path) -> list[str]:
    """The runs of a two-objective search's Pareto front, by name: Optuna's best trials, those that no other
    complete trial dominates (at most as large in validation rate and distortion, and smaller in one)."""
    sweep, study = search_study(sweep_dir, "Pareto front")
    if study is None or not sweep.two_objectives:
        return []
    return [t.user_attrs["run"] for t in study.best_trials if "run" in t.user_attrs]


def draw_search(sweep_dir: Path, out: Path) -> list[tuple[Path, str]]:
    """For a search: Optuna's own figures of its history and of the searched keys' importance, as PNGs in `out`
    with their captions (none for a grid, or under two complete trials)."""
    sweep, study = search_study(sweep_dir, "figures of the search")
    if study is None or len(study.get_trials(states=(TrialState.COMPLETE,))) < 2:
        return []
    from vae.evaluate.plots import save_figure  # here: plots imports torch, which the sweep's parent never needs
    # two objectives: the history of their sum, the negative ELBO (the front is drawn on the comparison's plane)
    elbo = {"target": lambda t: sum(t.values), "target_name": "rate + distortion"} if sweep.two_objectives else {}
    with experimental():
        figures = [("search_history.png", optuna.visualization.matplotlib.plot_optimization_history(study, **elbo),
                    "The search's history: each trial's best validation negative ELBO, and the best so far")]
        if len(sweep.search) > 1:
            warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes")  # low values: what we want
            importance = optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), **elbo)
            figures.append(("search_importance.png", importance,
                            "Which searched key mattered for the validation negative ELBO (Optuna's PED-ANOVA "
                            "importance)"))
    for name, ax, _ in figures:
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        save_figure(ax.figure, out / name)
    return [(out / name, caption) for name, _, caption in figures]
