"""Storage a weight search cannot open is one ConfigError line (exit 2 at the command line), never a
traceback from SQLAlchemy or the file system, and a mistyped journal path creates no directories."""

import sys

import pytest

from pretrainkit.cli import main
from pretrainkit.errors import ConfigError
from pretrainkit.search.task_weights import SearchConfig, search_task_weights


def _search(storage, run_dir=None):
    cfg = SearchConfig(n_trials=1, n_startup_trials=1, storage=storage)
    return search_task_weights(lambda w: 1.0, ["a", "b"], cfg, run_dir=run_dir, progress=False)


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_postgresql_without_its_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(ConfigError) as e:
        _search("postgresql://user:secret@127.0.0.1:5432/db")
    msg = _one_line(e)
    assert "pretrainkit[search-pg]" in msg and "secret" not in msg


def test_unreachable_postgresql_server(tmp_path):
    pytest.importorskip("psycopg", reason="the search-pg extra (psycopg) is not installed")
    with pytest.raises(ConfigError, match="cannot be opened") as e:
        _search("postgresql://user:secret@127.0.0.1:1/db")  # nothing listens on port 1
    assert "secret" not in _one_line(e)


@pytest.mark.parametrize("spec", ["sqlite:////proc/study.db", "sqlite:////nonexistent-pk/study.db"])
def test_sqlite_path_that_cannot_be_written(spec):
    with pytest.raises(ConfigError, match="search storage") as e:
        _search(spec)
    _one_line(e)


def test_corrupted_study_db_in_the_run_folder(tmp_path):
    (tmp_path / "study.db").write_bytes(b"this is not a database, but it has some bytes in it\n" * 20)
    with pytest.raises(ConfigError, match="not an SQLite database") as e:
        _search(None, run_dir=tmp_path)
    _one_line(e)


def test_journal_whose_parent_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file") as e:
        _search(f"journal:{tmp_path / 'afile' / 'study.log'}")
    _one_line(e)


def test_journal_in_a_folder_that_does_not_exist_creates_nothing(tmp_path):
    target = tmp_path / "nonexistent" / "dir"
    with pytest.raises(ConfigError, match="does not exist") as e:
        _search(f"journal:{target / 'x.log'}")
    _one_line(e)
    assert not (tmp_path / "nonexistent").exists()


def test_journal_file_that_is_not_a_journal(tmp_path):
    (tmp_path / "study.log").write_text("not json at all\n")
    with pytest.raises(ConfigError, match="not an Optuna journal") as e:
        _search(f"journal:{tmp_path / 'study.log'}")
    _one_line(e)


def test_bad_storage_fails_at_config_load_on_the_command_line(capsys, tmp_path):
    """Before any data is read or encoder trained: exit 2 and one line on stderr."""
    argv = [
        "saga",
        "search-weights",
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"search.storage=journal:{tmp_path / 'nonexistent' / 'x.log'}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pretrainkit: error:") and "does not exist" in err, (
        err
    )
    assert not (tmp_path / "nonexistent").exists()


def test_greenlet_is_installed_so_optuna_does_not_warn(recwarn, caplog):
    """Optuna's GP sampler warns 'greenlet unavailable' on every search without it (a core dependency)."""
    import importlib.util

    assert importlib.util.find_spec("greenlet") is not None
    _search(None)
    assert not [r for r in caplog.records if "greenlet" in r.getMessage()]
    assert not [w for w in recwarn if "greenlet" in str(w.message)]
