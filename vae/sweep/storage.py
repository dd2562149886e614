"""The study's database: <sweep>/study.db (SQLite) or a shared one (`storage`), with heartbeats and Optuna's
retry of the trials whose heartbeat stopped; its password never shown."""
from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from vae.errors import UserError
from vae.sweep.spec import Sweep, password_of, without_password

STORAGE_ENV = "VAE_SWEEP_STORAGE"  # the storage URL with its password, for this process and its workers only
TABLE_RACE_TRIES = 3


@contextmanager
def experimental():
    """Quiet Optuna's warnings that heartbeats, their retry callback and its matplotlib figures are
    experimental (since 2.8): they are what the sweep is built on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_url(sweep: Sweep, sweep_dir: Path) -> str:
    """The database to open: <dir>/study.db, or the shared one, with the password given to this process
    (--storage, passed on to its workers in STORAGE_ENV) when there is one; else the driver finds it
    (PostgreSQL: PGPASSWORD, ~/.pgpass)."""
    if not sweep.storage:
        return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    given = os.environ.get(STORAGE_ENV, "")
    return given if without_password(given) == sweep.storage else sweep.storage


def storage(sweep: Sweep, sweep_dir: Path) -> RDBStorage:
    """The study's database, with heartbeats and Optuna's retry of trials whose heartbeat stopped."""
    url = storage_url(sweep, sweep_dir)
    shown = without_password(url)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # workers take turns
    for attempt in range(TABLE_RACE_TRIES):
        try:
            with experimental():
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=sweep.heartbeat,
                                  grace_period=3 * sweep.heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
        except sqlalchemy.exc.IntegrityError:
            if attempt + 1 == TABLE_RACE_TRIES:
                raise UserError(f"cannot open the sweep's storage {shown}: its tables could not be made") from None
            # Machines that start at once on an empty database race to make Optuna's tables.
            print(f"{shown}: another process was making the study's tables; opening it again", file=sys.stderr)
            time.sleep(1 + attempt)
        except Exception as e:  # noqa: BLE001 - drivers fail in their own ways
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            password = password_of(url)
            reason = without_password(reason.replace(password, "***") if password else reason)
            hint = " (pip install 'psycopg[binary]')" if "psycopg" in repr(e.__cause__ or e) else ""
            raise UserError(f"cannot open the sweep's storage {shown}: {reason[:200]}{hint}") from None
