"""Where a weight-search study lives: build Optuna storage from a short spec, with one-line errors.

Specs: None (an SQLite file ``study.db`` in the run directory), ``journal:PATH`` (a journal file, e.g. on a
disk every machine mounts), ``sqlite:///PATH`` and ``postgresql://...`` (Optuna's RDB storage). Storage
that several workers share gets heartbeats, so a worker that dies mid-trial has its trial marked failed and
re-queued by the surviving workers (Optuna's retry callback).
"""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import optuna

# Optuna implements heartbeats for its RDB storage only; the journal storage gets them through the same
# (private) mix-in, so that optuna.storages.fail_stale_trials treats both alike. Optuna is pinned exactly.
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage

from pretrainkit.errors import ConfigError

HEARTBEAT_ATTR = "pretrainkit:heartbeat"  # journal trials: unix time of the worker's last heartbeat

_RDB_PREFIXES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")
# What to install for a URL whose database driver is missing.
_DRIVERS = {
    "postgresql": "pip install 'pretrainkit[search-pg]' (psycopg 3, SQLAlchemy's driver for postgresql://)",
    "mysql": "pip install PyMySQL and use a mysql+pymysql:// URL",
}


def retry_callback(max_retry: int | None):
    """Optuna's callback that re-queues a failed trial with the same parameters (at most ``max_retry`` times)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


class JournalWithHeartbeat(JournalStorage, BaseHeartbeat):
    """A journal storage whose running trials carry a heartbeat (a system attribute with the unix time).

    Workers on different machines compare their clocks here (the RDB storage uses the server's clock), so
    keep the machines' clocks in sync (NTP) and the grace period well above any skew.
    """

    def __init__(self, backend, heartbeat_interval: int, grace_period: int, callback) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # The start time counts as a beat: a worker killed before its first heartbeat is caught, and a
            # re-queued copy (which inherits the dead trial's last beat) is not failed the moment it starts.
            start = (
                t.datetime_start.replace(tzinfo=t.datetime_start.tzinfo or UTC).timestamp()
                if isinstance(t.datetime_start, datetime)
                else now
            )
            if now - max(start, t.system_attrs.get(HEARTBEAT_ATTR, start)) > self._grace_period:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._callback


def describe(spec: str) -> str:
    """The spec as it may be printed: a URL's password is masked."""
    if spec.startswith(_RDB_PREFIXES[1:]):
        import sqlalchemy

        try:
            url = sqlalchemy.engine.make_url(spec)
            return url.render_as_string(hide_password=True) if url.password else spec
        except Exception:  # an unparsable URL is reported by whoever opens it
            return spec
    return spec


def _check_folder(folder: Path, spec: str) -> None:
    """The folder a study file goes in must exist already: a typo must not create directories anywhere."""
    if folder.is_file():
        raise ConfigError(f"search storage '{spec}': '{folder}' is a file, not a folder")
    if not folder.is_dir():
        raise ConfigError(
            f"search storage '{spec}': folder '{folder}' does not exist; create it first "
            f"(on a disk every worker mounts, for a shared study)"
        )
    if not _writable(folder):
        raise ConfigError(f"search storage '{spec}': folder '{folder}' is not writable")


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def check_storage(spec: str | None) -> None:
    """What can be checked without opening the storage (at config load, before any training): the kind is
    known, a file's folder exists and is writable, an existing SQLite file is one, the driver is installed."""
    if spec is None:
        return
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:") :]).expanduser()
        if not path.name:
            raise ConfigError(f"search storage '{spec}' needs a file name: journal:PATH")
        _check_folder(path.parent.resolve(), spec)
        if path.is_dir():
            raise ConfigError(f"search storage '{spec}': '{path}' is a folder; name a file inside it")
        return
    if spec.startswith("sqlite:///"):
        path = Path(spec[len("sqlite:///") :]).expanduser()
        _check_folder(path.parent.resolve(), spec)
        if path.is_dir():
            raise ConfigError(f"search storage '{spec}': '{path}' is a folder; name a file inside it")
        if path.is_file() and not _is_sqlite(path):
            raise ConfigError(
                f"search storage '{spec}': '{path}' is not an SQLite database (corrupted?); "
                f"move it away to start a new study"
            )
        return
    if spec.startswith(_RDB_PREFIXES):
        import sqlalchemy

        shown = describe(spec)
        try:
            sqlalchemy.engine.make_url(spec).get_dialect().import_dbapi()
        except ImportError:
            dialect = spec.split(":", 1)[0].split("+", 1)[0]
            how = _DRIVERS.get(dialect, "install the database driver this URL names")
            raise ConfigError(f"search storage '{shown}' needs its database driver: {how}") from None
        except Exception as e:  # SQLAlchemy's URL and plugin errors have no common base
            raise ConfigError(f"search storage '{shown}' is not a valid database URL: {e}") from None
        return
    raise ConfigError(
        f"unknown search storage '{describe(spec)}'; allowed: journal:PATH, sqlite:///PATH, "
        f"postgresql://USER:PASSWORD@HOST:PORT/DB"
    )


def make_storage(
    spec: str | None,
    run_dir: Path | None,
    heartbeat: tuple[int, int] | None = None,
    max_retry: int | None = 3,
) -> optuna.storages.BaseStorage:
    """Build Optuna storage from a short spec (see SearchConfig.storage); every failure is one ConfigError.

    ``heartbeat``: (interval, grace period) in seconds, for storage that several workers share; a running
    trial with no heartbeat for the grace period is failed and re-queued (at most ``max_retry`` times).
    """
    if spec is None:
        if run_dir is None:
            return optuna.storages.InMemoryStorage()
        if run_dir.is_file():
            raise ConfigError(f"run folder '{run_dir}' is a file")
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    check_storage(spec)
    callback = retry_callback(max_retry)
    if spec.startswith("journal:"):
        try:
            backend = JournalFileBackend(str(Path(spec[len("journal:") :]).expanduser()))
            if heartbeat is None:
                return JournalStorage(backend)
            return JournalWithHeartbeat(backend, heartbeat[0], heartbeat[1], callback)
        except OSError as e:
            raise ConfigError(f"search storage '{spec}' cannot be opened: {e.strerror or e}") from None
    return _rdb(spec, heartbeat, callback)


def _rdb(spec: str, heartbeat: tuple[int, int] | None, callback) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    shown = describe(spec)
    kw = {}
    if heartbeat is not None:
        kw = {
            "heartbeat_interval": heartbeat[0],
            "grace_period": heartbeat[1],
            "heartbeat_stale_trial_callback": callback,
        }
    # pool_pre_ping: a server-side dropped connection (idle timeout, server restart) is reopened, not raised.
    engine_kwargs = None
    if spec.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}
        if "connect_timeout" not in spec:  # libpq waits for TCP's own timeout (minutes) on a silent host
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        for attempt in range(6):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs, **kw)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers that start together on an empty database all create Optuna's tables; all but one
                # lose that race with a duplicate-key error, after which the tables exist.
                if attempt == 5:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError:
        dialect = spec.split(":", 1)[0].split("+", 1)[0]
        how = _DRIVERS.get(dialect, "install the database driver this URL names")
        raise ConfigError(f"search storage '{shown}' needs its database driver: {how}") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(f"search storage '{shown}' is not a valid database URL: {e}") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise ConfigError(
            f"search storage '{shown}' cannot be opened: {reason[0] if reason else type(e).__name__}"
        ) from None


def create_study(storage: optuna.storages.BaseStorage, spec: str | None, **kw) -> optuna.Study:
    """optuna.create_study, with a database that opened but cannot be written (read-only file, lost
    connection, no permission on the server) reported as one line."""
    import sqlalchemy.exc

    try:
        return optuna.create_study(storage=storage, **kw)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        if not isinstance(storage, JournalStorage):
            raise
        # the journal is replayed on first use: a file of other content fails here
        raise ConfigError(
            f"search storage '{spec}' is not an Optuna journal file ({type(e).__name__}); "
            f"move it away to start a new study"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise ConfigError(
            f"search storage '{describe(spec or 'study.db')}' cannot be used: "
            f"{reason[0] if reason else type(e).__name__}"
        ) from None


def _is_sqlite(path: Path) -> bool:
    """An empty file is a valid new database; anything else must carry SQLite's header and be readable."""
    if path.stat().st_size == 0:
        return True
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return True
