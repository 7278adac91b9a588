"""A real PostgreSQL server for the shared-study tests: the `pgserver` wheel (PostgreSQL binaries inside a
PyPI package, started on a Unix socket in a temporary folder; as root it runs the server as its own
unprivileged user, since PostgreSQL refuses to run as root)."""

import os
import tempfile

import pytest


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a fresh server for this test session; skipped (failed under CI=true) where none can start."""
    try:
        import pgserver
        import psycopg  # noqa: F401
    except ImportError as e:
        _unavailable(
            f"PostgreSQL test server needs pgserver and psycopg (pip install -e '.[search-pg,dev]'): {e}"
        )
    try:
        server = pgserver.get_server(tempfile.mkdtemp(prefix="pk-pg-"), cleanup_mode="delete")
    except Exception as e:  # any start-up failure means no server on this machine
        _unavailable(f"pgserver could not start a PostgreSQL server: {type(e).__name__}: {e}")
    yield server.get_uri()
    server.cleanup()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":  # CI installs both (Makefile EXTRAS): a skip there would hide a gap
        pytest.fail(reason)
    pytest.skip(reason)
