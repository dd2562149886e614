"""The worker loop: take trials until the sweep is done, and queue again the trials stopped by a signal or by
the machine, or whose worker died; heartbeats mark a dead worker's trial as stale, to resume from its last.pt."""
from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from vae.cli import invoked_as
from vae.errors import Interrupted, UserError
from vae.sweep.spec import Sweep
from vae.sweep.stop import WorkerStop
from vae.sweep.storage import experimental
from vae.sweep.study import open_study, plain_study
from vae.sweep.trial import claim, objective, reason

POLL_SECONDS = 1  # how often a worker with nothing to take looks again


def work(sweep: Sweep, sweep_dir: Path, workers: int = 1) -> None:
    """One of `workers` on this machine: take trials until the sweep is done (waiting for other workers'
    last trials, and retrying those whose worker died once their heartbeat goes stale). A trial stopped by
    the machine (an OSError: a full disk, a permission) is queued again and this worker stops, saying why;
    so is one stopped by SIGINT or SIGTERM, which stop this worker at any moment (see WorkerStop)."""
    with WorkerStop() as stop:
        try:
            take_trials(sweep, sweep_dir, workers, stop)
        except (Interrupted, KeyboardInterrupt) as e:
            with stop.deferred(then_stop=False):
                queued = retry_interrupted(sweep, sweep_dir)
            what = "the running trial is saved and queued again" if queued else "no trial was running"
            raise Interrupted(getattr(e, "signum", signal.SIGINT), f"sweep stopped: {what}; continue with: "
                              f"{resume(sweep_dir)}") from None


def take_trials(sweep: Sweep, sweep_dir: Path, workers: int, stop: WorkerStop) -> None:
    """Train trials, then wait for the others' last ones, until no trial is left to take or to wait for."""
    study = open_study(sweep, sweep_dir)
    run = objective(sweep, sweep_dir, workers)
    while True:
        trials = study.get_trials(deepcopy=False)
        fresh = [t for t in trials if "failed_trial" not in t.system_attrs]  # not retries
        if any(t.state == TrialState.WAITING for t in trials) or len(fresh) < sweep.size():
            try:
                study.optimize(run, n_trials=1, catch=(UserError,))
            except OSError as e:
                with stop.deferred():
                    retry_failed(sweep, sweep_dir)
                raise UserError(f"a trial stopped on {reason(e)}; it is queued again: free the cause, then continue "
                                f"with: {resume(sweep_dir)}") from None
            if (signum := stop.received()) is not None:  # training took it, and finished the trial's run
                raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped after the trial")
        elif any(t.state == TrialState.RUNNING for t in trials):  # others' last trials: wait, and watch them
            time.sleep(POLL_SECONDS)
            with stop.deferred(), experimental():  # each failed trial queued again, whatever signal comes
                optuna.storages.fail_stale_trials(study)
                retry_unstarted(sweep, sweep_dir)
        elif not retry_orphans(sweep, sweep_dir):
            return


def resume(sweep_dir: Path) -> str:
    """The command that continues the sweep, as the user runs the commands."""
    return f"{invoked_as('sweep')} --resume {sweep_dir}"


def requeued(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a copy of `trial` was already queued (Optuna lists each copy's ancestors in retry_history)."""
    return any(trial.number in t.system_attrs.get("retry_history", []) for t in study.get_trials(deepcopy=False))


def retry_interrupted(sweep: Sweep, sweep_dir: Path) -> int:
    """After a stop by signal, this worker's trial (its checkpoint saved) is queued again at once:
    running, or failed by Optuna's handling of KeyboardInterrupt (a failure with no error of ours). How many."""
    study = plain_study(sweep, sweep_dir)
    mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL))
            if t.user_attrs.get("claim") == claim(t.number) and "error" not in t.user_attrs and not requeued(study, t)]
    for t in mine:
        requeue(study, t)
    return len(mine)


def retry_failed(sweep: Sweep, sweep_dir: Path) -> None:
    """Queue again this worker's trial that the machine stopped (its reason kept in its user attributes)."""
    study = plain_study(sweep, sweep_dir)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("claim") == claim(t.number) and "requeued_because" in t.user_attrs \
                and not requeued(study, t):
            requeue(study, t)


def retry_unstarted(sweep: Sweep, sweep_dir: Path) -> None:
    """Queue again the running trials whose worker died before it claimed them (Optuna never finds those
    stale, having no heartbeat of theirs): older than the grace period, and not claimed as themselves."""
    study = plain_study(sweep, sweep_dir)
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not t.user_attrs.get("claim", "").endswith(f"#{t.number}") \
                and (now - t.datetime_start).total_seconds() > 3 * sweep.heartbeat:
            requeue(study, t)


def retry_orphans(sweep: Sweep, sweep_dir: Path) -> int:
    """Queue again the failed trials that nothing continues: failed (as stale, or by their own worker) by a worker
    killed before it queued the copy. Those that failed on an error of ours (kept as "error") stay failed, and so do
    those whose grid point another trial has, running or complete. How many."""
    study = plain_study(sweep, sweep_dir)
    trials = study.get_trials(deepcopy=False)
    covered = [t.params for t in trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE)]
    orphans = [t for t in trials if t.state == TrialState.FAIL and "error" not in t.user_attrs
               and not requeued(study, t) and t.params not in covered]
    for t in orphans:
        requeue(study, t)
    return len(orphans)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Fail a trial (if running) and queue a copy of it, as Optuna's retry callback does for a stale one."""
    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
    with experimental():
        RetryHeartbeatStaleTrialCallback()(study, study.trials[trial.number])
