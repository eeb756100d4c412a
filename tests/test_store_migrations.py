"""
Tests for gotaxy.store.migrations and ``gotaxy migrate``: a database from
the release before schema versions migrates without losing a row, a new one
is created at the newest version, a database from a newer Gotaxy is refused
untouched, and two servers migrating one database at once both start.
Each runs on SQLite and on PostgreSQL (``store_url`` in tests/conftest.py).
"""

from __future__ import annotations

import io
import sqlite3
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from sqlalchemy import MetaData, create_engine, text

from gotaxy import cli
from gotaxy.proxy import PublicAddress
from gotaxy.store import Store, StoreError
from gotaxy.store.migrations import LATEST, MIGRATIONS, SCHEMA_TABLE, applied_versions, migrate, schema_version
from gotaxy.store.store import driver_url

OLD_DUMP = Path(__file__).parent / "data" / "store-0.1.0.sql"
#: The one client token the 0.1.0 store in OLD_DUMP holds (only its hash is stored there).
OLD_TOKEN = "gtx_RsbTsa82bgHGUf253dSaBMew_h5KgpO2SAYGiD18zis"
OLD_ADMIN_PASSWORD = "old release password 1"


def load_old_release(url: str, scratch: Path) -> None:
    """The 0.1.0 store of OLD_DUMP, written into the empty database at ``url``."""
    statements = [
        line for line in OLD_DUMP.read_text().splitlines()
        if line and not line.startswith("--") and line not in ("BEGIN TRANSACTION;", "COMMIT;")
    ]
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else str(scratch / "old.db")
    connection = sqlite3.connect(path)
    connection.executescript("\n".join(statements))
    connection.close()
    if url.startswith("sqlite:///"):
        return
    # On PostgreSQL: the same tables, columns, indexes and rows, as 0.1.0's
    # dataset made them there.
    source = create_engine("sqlite:///" + path)
    target = create_engine(driver_url(url))
    metadata = MetaData()
    metadata.reflect(source)
    metadata.create_all(target)
    with source.connect() as reading, target.begin() as writing:
        for table in metadata.sorted_tables:
            rows = [dict(r._mapping) for r in reading.execute(table.select())]
            if rows:
                writing.execute(table.insert(), rows)
            writing.execute(text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), COALESCE(MAX(id), 0) + 1, false) "
                f"FROM {table.name}"
            ))
    source.dispose()
    target.dispose()


def row_counts(store: Store) -> Dict[str, int]:
    return {table: store.db[table].count() for table in store.db.tables if table != SCHEMA_TABLE}


@pytest.fixture
def old_url(empty_store_url: str, tmp_path: Path) -> str:
    load_old_release(empty_store_url, tmp_path)
    return empty_store_url


def test_a_store_of_the_release_before_versions_migrates_without_losing_rows(old_url: str) -> None:
    engine = create_engine(driver_url(old_url))  # counted by hand: opening a Store would migrate it
    with engine.connect() as connection:
        tables = [t for t in engine.dialect.get_table_names(connection)]
        counts = {t: connection.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables}
    engine.dispose()
    assert SCHEMA_TABLE not in tables and all(counts.values())  # every table has a row to lose

    store = Store(old_url)
    try:
        assert [m.version for m in store.applied] == [m.version for m in MIGRATIONS]
        assert store.schema_version == LATEST
        after = row_counts(store)
        assert {t: after[t] for t in counts} == counts
        # The rows still mean what they meant: the token logs in, the
        # operator's password still works, the tunnel keeps its port.
        assert store.authenticate_token(OLD_TOKEN).name == "laptop"
        assert store.verify_admin("admin", OLD_ADMIN_PASSWORD)
        assert store.address_owner(PublicAddress.tcp(16000)) == ("laptop", "ssh")
        assert {(t.name, t.address) for t in store.list_tunnels("laptop")} == {
            ("ssh", PublicAddress.tcp(16000)), ("web", PublicAddress.tcp(16001))}
        assert all(t.spec is not None and t.spec["type"] == "tcp" for t in store.list_tunnels("laptop"))
        assert store.events(type_="login.failed")[0].count == 3
    finally:
        store.close()


def test_a_new_store_is_created_at_the_newest_version_and_opening_again_applies_nothing(empty_store_url: str) -> None:
    first = Store(empty_store_url)
    assert first.schema_version == LATEST and first.applied
    first.create_token("laptop")
    first.close()
    again = Store(empty_store_url)
    try:
        assert again.applied == [] and again.schema_version == LATEST
        assert [t.name for t in again.list_tokens()] == ["laptop"]
    finally:
        again.close()


def test_a_store_a_newer_gotaxy_migrated_is_refused_and_left_alone(store_url: str) -> None:
    engine = create_engine(driver_url(store_url))
    with engine.begin() as connection:
        connection.execute(text(
            f"INSERT INTO {SCHEMA_TABLE} (version, description, applied_at) VALUES (:v, 'from the future', 0)"
        ), {"v": LATEST + 1})
        connection.execute(text("INSERT INTO tokens (name) VALUES ('untouched')"))
    engine.dispose()
    with pytest.raises(StoreError) as refused:
        Store(store_url)
    message = str(refused.value)
    assert f"schema version {LATEST + 1}" in message and "upgrade Gotaxy" in message
    engine = create_engine(driver_url(store_url))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM tokens")).scalars().all() == ["untouched"]
    engine.dispose()


def test_two_servers_migrating_one_store_at_once_both_start(empty_store_url: str) -> None:
    results: List[object] = []
    barrier = threading.Barrier(2)

    def open_store() -> None:
        barrier.wait(timeout=30)
        try:
            store = Store(empty_store_url)
            results.append([m.version for m in store.applied])
            store.close()
        except Exception as e:  # the test reports it below
            results.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(isinstance(r, Exception) for r in results), results
    # Each migration was recorded once, by one of them.
    applied = sorted(v for r in results for v in r)  # type: ignore[union-attr]
    assert applied == sorted(m.version for m in MIGRATIONS)
    store = Store(empty_store_url)
    try:
        versions = [r["version"] for r in store.db[SCHEMA_TABLE].find(order_by="version")]
        assert versions == [m.version for m in MIGRATIONS]
    finally:
        store.close()


def test_a_failed_migration_is_not_recorded_and_the_next_start_applies_it(empty_store_url: str) -> None:
    from gotaxy.store.migrations import Migration

    def broken(connection: object) -> None:
        raise RuntimeError("disk on fire")

    engine = create_engine(driver_url(empty_store_url))
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            migrate(engine, "the test database", migrations=(*MIGRATIONS, Migration(LATEST + 1, "broken", broken)))
        with engine.connect() as connection:
            assert connection.execute(text(f"SELECT MAX(version) FROM {SCHEMA_TABLE}")).scalar() == LATEST
        applied = migrate(engine, "the test database",
                          migrations=(*MIGRATIONS, Migration(LATEST + 1, "fixed", lambda c: None)))
        assert [m.description for m in applied] == ["fixed"]
    finally:
        engine.dispose()


def test_a_version_missing_below_the_highest_is_applied(empty_store_url: str) -> None:
    # A database made by a build in which migration 13 had not landed yet but 14 had: 13 is not recorded.
    engine = create_engine(driver_url(empty_store_url))
    try:
        without_13 = tuple(m for m in MIGRATIONS if m.version != 13)
        migrate(engine, "the test database", migrations=without_13)
        assert 13 not in applied_versions(engine) and schema_version(engine) == LATEST
        with engine.begin() as connection:  # an event recorded before 13: not yet marked notified
            connection.execute(text("INSERT INTO events (at, type) VALUES (100.0, 'client.connected')"))
        applied = migrate(engine, "the test database")
        assert [m.version for m in applied] == [13]
        with engine.connect() as connection:
            assert connection.execute(text("SELECT notified FROM events")).scalar() == 100.0
        assert migrate(engine, "the test database") == []
    finally:
        engine.dispose()


# -- gotaxy migrate ----------------------------------------------------------------


def gotaxy(capsys: pytest.CaptureFixture, *argv: str) -> Tuple[int, str, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


def test_gotaxy_migrate_says_what_it_applied_then_that_nothing_is_left(capsys, old_url: str) -> None:
    code, out, _ = gotaxy(capsys, "--database-url", old_url, "migrate")
    assert code == 0
    for migration in MIGRATIONS:
        assert f"applied migration {migration.version}: {migration.description}" in out
    assert f"now at schema version {LATEST}" in out
    code, out, _ = gotaxy(capsys, "--database-url", old_url, "migrate")
    assert code == 0
    assert f"up to date (schema version {LATEST}); nothing to apply" in out


def test_gotaxy_migrate_refuses_a_newer_store_with_a_sentence(capsys, store_url: str) -> None:
    engine = create_engine(driver_url(store_url))
    with engine.begin() as connection:
        connection.execute(text(
            f"INSERT INTO {SCHEMA_TABLE} (version, description, applied_at) VALUES (:v, 'future', 0)"
        ), {"v": LATEST + 7})
    engine.dispose()
    code, _, err = gotaxy(capsys, "--database-url", store_url, "migrate")
    assert code == 1
    assert err.startswith("gotaxy: the database ") and "upgrade Gotaxy here too" in err
    assert err.count("\n") == 1


def test_gotaxy_reads_the_database_url_of_the_servers_config(capsys, tmp_path: Path, store_url: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text(f'[database]\nurl = "{store_url}"\n')
    code, out, err = gotaxy(capsys, "--data-dir", str(data), "token", "create", "laptop")
    assert code == 0, err
    store = Store(store_url)
    try:
        assert [t.name for t in store.list_tokens()] == ["laptop"]
    finally:
        store.close()
    assert not (data / "gotaxy.db").exists()


def test_the_database_password_is_never_shown(capsys, tmp_path: Path) -> None:
    url = "postgresql://gotaxy:hunter2-secret@127.0.0.1:1/gotaxy"
    code, _, err = gotaxy(capsys, "--database-url", url, "migrate")
    assert code == 1
    assert "hunter2-secret" not in err
    assert "postgresql://gotaxy:***@127.0.0.1:1/gotaxy" in err and "check database.url" in err


def test_database_url_in_the_config_stays_out_of_reprs_and_errors() -> None:
    from gotaxy.config import ConfigError, ServerConfig, parse_server_config

    config = parse_server_config({"database": {"url": "postgresql://gotaxy:hunter2-secret@db/gotaxy"}}).config
    assert config.effective_database_url() == "postgresql://gotaxy:hunter2-secret@db/gotaxy"
    assert "hunter2-secret" not in repr(config)
    with pytest.raises(ConfigError) as bad:
        parse_server_config({"database": {"url": "hunter2-secret is no URL"}})
    assert "database.url" in str(bad.value) and "hunter2-secret" not in str(bad.value)
    with pytest.raises(ConfigError, match="keep database.url only"):
        ServerConfig(database_url="sqlite:////a.db", store="sqlite:////b.db")
    # The older name still works.
    assert ServerConfig(store="sqlite:////b.db").effective_database_url() == "sqlite:////b.db"


def _operational(message: str) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


def test_a_start_waits_out_another_servers_lock_and_reports_an_unreachable_database_at_once(monkeypatch) -> None:
    # SQLite answers "database is locked" at once, without its busy timeout,
    # when two writers would deadlock: that is another server migrating, and
    # the step is tried again; an error of the database itself is not.
    from gotaxy.store import migrations

    monkeypatch.setattr(migrations, "RETRY_DELAY", 0.001)
    failures = [_operational("database is locked"), _operational("database is locked")]
    calls: List[str] = []

    def locked_twice() -> str:
        calls.append("try")
        if failures:
            raise failures.pop(0)
        return "migrated"

    assert migrations._retrying(float("inf"), locked_twice) == "migrated"
    assert len(calls) == 3

    def unreachable() -> str:
        calls.append("unreachable")
        raise _operational('connection to server at "127.0.0.1", port 1 failed: Connection refused')

    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError, match="Connection refused"):
        migrations._retrying(float("inf"), unreachable)
    assert calls.count("unreachable") == 1
    # Contention that outlasts the deadline is reported too, not waited on forever.
    with pytest.raises(OperationalError, match="locked"):
        migrations._retrying(0.0, lambda: (_ for _ in ()).throw(_operational("database is locked")))
