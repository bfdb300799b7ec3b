"""The real PostgreSQL that ``scripts/provision.sh`` starts, as a Celery result backend.

The cluster ``codexagent`` listens on 127.0.0.1:5433 with a test-only user and password (a public
test value, not a secret); Celery's SQLAlchemy backend keeps results in its ``celery_taskmeta``
table.
"""

from __future__ import annotations

from typing import Any

__all__ = ["POSTGRES_BACKEND", "postgres_backend_or_skip", "result_rows"]

POSTGRES_BACKEND = "db+postgresql://codex_results:codex-test-only@127.0.0.1:5433/codex_results"
_DSN = "host=127.0.0.1 port=5433 dbname=codex_results user=codex_results password=codex-test-only connect_timeout=5"


def postgres_backend_or_skip() -> str:
    """The backend URL, or a named skip when the server or the driver is absent."""
    import pytest

    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg absent: scripts/provision.sh installs it")
    try:
        psycopg.connect(_DSN).close()
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL absent on 127.0.0.1:5433 (scripts/provision.sh starts it): {e}")
    return POSTGRES_BACKEND


def result_rows(task_ids: list[str]) -> dict[str, tuple[str, bytes]]:
    """``task_id -> (status, stored result bytes)`` straight from ``celery_taskmeta``."""
    import psycopg

    with psycopg.connect(_DSN) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT task_id, status, result FROM celery_taskmeta WHERE task_id = ANY(%s)", (task_ids,))
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return {str(task_id): (str(status), bytes(result or b"")) for task_id, status, result in rows}
