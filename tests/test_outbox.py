"""The postgres queue engine (an outbox table in the app's own database) from
the outside: real PostgreSQL (a database of each test's own), real daemons in
child processes, a real relay. The queue contract itself runs in test_queue.py.

What an app relies on: mail enqueued inside its transaction goes out if and
only if the transaction commits, exactly once, through daemon crashes and a
database that goes away for a while."""

from __future__ import annotations

import base64
import json
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mailmand import Client, Email
from mailmand.cli import main
from mailmand.config import Config, QueueConfig, load
from mailmand.errors import ConfigError, NoOutbox, QueueUnavailable
from mailmand.ingest import Ingester
from mailmand.queues import open_queue
from mailmand.stores import Status, open_store
from tests.conftest import POSTGRES_DSN, run_cli
from tests.daemonproc import DaemonProcess, wait_until
from tests.tcpproxy import TcpProxy

TABLE = "mailmand_outbox"


def write_outbox_config(path: Path, dsn: str, port: int, server: str = "", table: str = TABLE) -> Path:
    """A daemon's YAML: the outbox in `dsn`, the store in SQLite next to the file."""
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: postgres\n      dsn: \"{dsn}\"\n      table: {json.dumps(table)}\n"
        "  server:\n"
        f"    database:\n      engine: sqlite3\n      path: {path.parent / 'store' / 'mailmand.db'}\n"
        "    interval: 1s\n"
        "    backoff: {min: 1s, max: 2s}\n"
        f"{server}"
        f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n      timeout: 5s\n"
    )
    return path


def with_password(dsn: str, **changes: str) -> str:
    """The dsn with a password (the test server trusts loopback, so any password works)."""
    return make_conninfo(**{**conninfo_to_dict(dsn), "password": "s3cret-pw", **changes})


def mail(subject: str) -> Email:
    return Email(sender="shop@example.com", to="buyer@example.com", subject=subject, text="thank you")


def subjects(server) -> Counter[str]:
    return Counter(message_from_bytes(m.data)["Subject"] for m in server.messages)


def rows(dsn: str, table: str = TABLE) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def make_table(dsn: str) -> None:
    """The outbox, as an app's migration makes it from `mailmand outbox-sql`."""
    out = run_cli("outbox-sql")
    assert out.returncode == 0, out.stderr
    with psycopg.connect(dsn) as conn:
        conn.execute(out.stdout.decode())


@pytest.fixture
def shop(postgres_dsn: str) -> str:
    """The app's database: an orders table, and the outbox beside it."""
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE orders (id text PRIMARY KEY)")
    make_table(postgres_dsn)
    return postgres_dsn


def order(conn: psycopg.Connection, client: Client, name: str) -> str:
    """What an app does in one transaction: write its row, and queue the mail about it."""
    conn.execute("INSERT INTO orders VALUES (%s)", (name,))
    return client.enqueue(mail(name), connection=conn)


# -- the table ---------------------------------------------------------------------


def test_outbox_sql_prints_a_table_that_producers_and_the_daemon_use(postgres_dsn, tmp_path):
    conf = write_outbox_config(tmp_path / "m.yaml", postgres_dsn, 9, table="app.outbox")
    out = run_cli("outbox-sql", "-c", str(conf))
    assert out.returncode == 0, out.stderr
    ddl = out.stdout.decode()
    assert 'CREATE TABLE IF NOT EXISTS "app"."outbox"' in ddl and "record json NOT NULL" in ddl
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute(ddl)  # as a migration runs it
    client = Client(load(conf, producer=True))
    try:
        msg_id = client.enqueue(mail("hello"))
    finally:
        client.close()
    queue = open_queue(load(conf).queue, daemon=True)
    try:
        [item] = queue.take(10)
        assert item.data["id"] == msg_id
        queue.ack([item])
    finally:
        queue.close()
    assert rows(postgres_dsn, "app.outbox") == 0


def test_a_producer_facing_no_table_is_told_the_command_that_prints_it(postgres_dsn, tmp_path):
    conf = write_outbox_config(tmp_path / "m.yaml", postgres_dsn, 9)
    client = Client(load(conf, producer=True))
    try:
        with pytest.raises(NoOutbox, match="mailmand outbox-sql"):
            client.enqueue(mail("lost?"))
        with psycopg.connect(postgres_dsn) as conn, pytest.raises(NoOutbox, match="mailmand outbox-sql"):
            client.enqueue(mail("lost?"), connection=conn)
    finally:
        client.close()
    out = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com", "--text", "x")
    assert out.returncode == 1 and b"mailmand outbox-sql" in out.stderr and b"Traceback" not in out.stderr


def test_the_daemon_makes_the_table_and_status_shows_the_backlog(postgres_dsn, tmp_path, capsys):
    dsn = with_password(postgres_dsn)
    conf = write_outbox_config(tmp_path / "m.yaml", dsn, 9)
    daemon = DaemonProcess(conf).ready()
    try:
        daemon.wait_for("created the outbox table")
    finally:
        assert daemon.stop() == 0
    assert "s3cret-pw" not in daemon.log and "password=***" in daemon.log
    client = Client(load(conf, producer=True))
    try:
        ids = [client.enqueue(mail(f"m{i}")) for i in range(3)]
    finally:
        client.close()
    capsys.readouterr()
    assert main(["show", "-c", str(conf), ids[1]]) == 0
    assert "queued in the outbox, not ingested yet" in capsys.readouterr().out
    assert main(["status", "-c", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "outbox     3 waiting to be ingested in " in out and f"table {TABLE}, the oldest for " in out
    assert main(["status", "--json", "-c", str(conf)]) == 0
    queue = json.loads(capsys.readouterr().out)["queue"]
    assert (queue["engine"], queue["label"], queue["waiting"]) == ("postgres", "outbox", 3)
    assert queue["oldest_s"] >= 0
    check = run_cli("check-config", "--connect", "-c", str(conf))
    assert f"table {TABLE}: reachable, 3 waiting to be ingested".encode() in check.stdout, check.stdout
    text = check.stdout + check.stderr + json.dumps(queue).encode() + out.encode()
    assert b"s3cret-pw" not in text and b"password=***" in text


def test_metrics_count_the_outbox_backlog(shop, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from mailmand.config import DatabaseConfig
    from mailmand.metrics import StateCollector

    cfg = QueueConfig(engine="postgres", dsn=shop)
    producer = open_queue(cfg)
    daemon = open_queue(cfg, daemon=True)
    store = open_store(DatabaseConfig(path=tmp_path / "store.db"), create=True)
    try:
        for i in range(4):
            producer.put(mail(f"m{i}").to_record(10**6).to_json())
        registry = CollectorRegistry()
        registry.register(StateCollector(store, daemon))
        assert b"mailmand_queue_backlog 4.0" in generate_latest(registry)
        daemon.ack(daemon.take(3))
        assert b"mailmand_queue_backlog 1.0" in generate_latest(registry)
    finally:
        store.close()
        daemon.close()
        producer.close()


@pytest.fixture
def roles(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """Two login roles (cluster-wide, so named per test): an app's and the daemon's."""
    tag = uuid.uuid4().hex[:8]
    app, daemon = f"mm_app_{tag}", f"mm_daemon_{tag}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for role in (app, daemon):
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        yield app, daemon
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for role in (app, daemon):
                conn.execute(f'DROP OWNED BY "{role}"')
                conn.execute(f'DROP ROLE "{role}"')


def test_the_grants_the_docs_give_are_enough(postgres_dsn, roles, tmp_path):
    app, daemon_role = roles
    as_app = make_conninfo(**{**conninfo_to_dict(postgres_dsn), "user": app})
    as_daemon = make_conninfo(**{**conninfo_to_dict(postgres_dsn), "user": daemon_role})
    # A daemon that may not create the table, facing none: refused at start, naming what to do.
    conf = write_outbox_config(tmp_path / "m.yaml", as_daemon, 9)
    out = run_cli("run", "-c", str(conf))
    assert out.returncode == 78, out.stderr
    assert b"mailmand outbox-sql" in out.stderr and b"GRANT SELECT, UPDATE, DELETE" in out.stderr
    make_table(postgres_dsn)  # the app's migration, as the table's owner
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f'GRANT INSERT ON {TABLE} TO "{app}"')
        conn.execute(f'GRANT SELECT, UPDATE, DELETE ON {TABLE} TO "{daemon_role}"')
    producer = open_queue(QueueConfig(engine="postgres", dsn=as_app))
    daemon = open_queue(QueueConfig(engine="postgres", dsn=as_daemon), daemon=True)
    try:
        daemon.check()
        producer.put({"id": "m1"})
        with psycopg.connect(as_app) as conn:
            producer.put_in({"id": "m2"}, conn)
        items = daemon.take(10)
        assert [i.data for i in items] == [{"id": "m1"}, {"id": "m2"}]
        daemon.ack(items)
    finally:
        daemon.close()
        producer.close()
    assert rows(postgres_dsn) == 0


def test_a_table_of_that_name_that_is_not_an_outbox_is_refused_at_start(postgres_dsn, tmp_path):
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, body text)")  # the app's own
    conf = write_outbox_config(tmp_path / "m.yaml", postgres_dsn, 9)
    out = run_cli("run", "-c", str(conf))
    assert out.returncode == 78, out.stderr
    assert b"is not a mailmand outbox" in out.stderr and b"email.queue.default.table" in out.stderr


def test_a_table_name_is_checked_before_anything_is_made(tmp_path):
    conf = write_outbox_config(tmp_path / "m.yaml", "dbname=x", 9, table='"x"; DROP TABLE orders; --')
    for args in (("run",), ("check-config",), ("send", "--to", "b@example.com", "--text", "x")):
        out = run_cli(*args, "-c", str(conf))
        assert out.returncode == 78, out.stderr
        assert b"email.queue.default.table: expected a table name" in out.stderr
    with pytest.raises(ConfigError, match="email.queue.default.table"):
        open_queue(QueueConfig(engine="postgres", dsn="dbname=x", table="Orders"))  # built in code: checked too


def test_a_database_that_is_not_there_is_a_configuration_error(tmp_path):
    nowhere = with_password(POSTGRES_DSN, dbname=f"mailmand_nowhere_{uuid.uuid4().hex[:8]}")
    conf = write_outbox_config(tmp_path / "m.yaml", nowhere, 9)
    for args in (("run",), ("send", "--from", "a@example.com", "--to", "b@example.com", "--text", "x")):
        out = run_cli(*args, "-c", str(conf))
        assert out.returncode == 78, out.stderr  # not a temporary failure: retrying will not mend it
        assert b"email.queue.default.dsn: the outbox database refused the connection" in out.stderr
        assert b"does not exist" in out.stderr and b"s3cret-pw" not in out.stderr


# -- the caller's transaction --------------------------------------------------------


def test_enqueue_in_the_apps_transaction_exists_only_if_it_commits(shop, tmp_path):
    conf = write_outbox_config(tmp_path / "m.yaml", shop, 9)
    client = Client(load(conf, producer=True))
    try:
        with psycopg.connect(shop) as conn:
            with conn.transaction():
                order(conn, client, "kept")
            with pytest.raises(RuntimeError), conn.transaction():
                order(conn, client, "gone")
                assert rows(shop) == 1, "not visible to others before the commit"
                raise RuntimeError("the app fails after enqueueing")
        with psycopg.connect(shop) as conn:
            kept = [json.loads(r) for (r,) in conn.execute(f"SELECT record::text FROM {TABLE}")]
            assert [o for (o,) in conn.execute("SELECT id FROM orders")] == ["kept"]
        assert len(kept) == 1 and b"Subject: kept" in base64.b64decode(kept[0]["raw"])
    finally:
        client.close()


def test_a_connection_the_engine_cannot_use_is_refused_clearly(shop, tmp_path):
    client = Client(load(write_outbox_config(tmp_path / "m.yaml", shop, 9), producer=True))
    try:
        with pytest.raises(TypeError, match="psycopg 3 connection"):
            client.enqueue(mail("x"), connection=object())
        with psycopg.connect(POSTGRES_DSN) as conn, pytest.raises(ValueError, match="but the outbox is in"):
            client.enqueue(mail("x"), connection=conn)  # another database: no daemon would read it there
    finally:
        client.close()
    assert rows(shop) == 0
    spool = Client(Config(queue=QueueConfig(path=tmp_path / "spool")))
    try:
        with psycopg.connect(shop) as conn, pytest.raises(TypeError, match="connection= needs the postgres"):
            spool.enqueue(mail("x"), connection=conn)
    finally:
        spool.close()


# -- the daemon --------------------------------------------------------------------


@pytest.fixture
def running(shop, smtp_server, tmp_path):
    """A relay, and a daemon reading the shop's outbox."""
    relay = smtp_server()
    conf = write_outbox_config(tmp_path / "m.yaml", shop, relay.port)
    daemon = DaemonProcess(conf).ready()
    yield relay, conf, daemon
    assert daemon.stop() == 0


def test_a_commit_delivers_once_and_a_rollback_nothing(running, shop):
    relay, conf, daemon = running
    client = Client(load(conf, producer=True))
    try:
        with psycopg.connect(shop) as conn:
            with pytest.raises(RuntimeError), conn.transaction():
                order(conn, client, "rolled back")
                raise RuntimeError("payment refused")
            with conn.transaction():
                order(conn, client, "committed")
    finally:
        client.close()
    assert wait_until(lambda: subjects(relay) == Counter({"committed": 1}), timeout=30), subjects(relay)
    assert wait_until(lambda: rows(shop) == 0)
    store = open_store(load(conf).server.database)
    try:
        assert wait_until(lambda: store.counts()[Status.SENT] == 1)
        assert sum(store.counts().values()) == 1
    finally:
        store.close()


def test_eight_app_transactions_at_once_half_rolled_back_deliver_the_committed(running, shop):
    relay, conf, daemon = running
    client = Client(load(conf, producer=True))
    together = threading.Barrier(8)
    errors: list[BaseException] = []

    def app(n: int) -> None:
        try:
            with psycopg.connect(shop) as conn, conn.transaction():
                order(conn, client, f"order {n}")
                together.wait(20)  # all eight open at once, each holding its outbox row
                if n % 2:
                    raise psycopg.Rollback()  # the transaction block rolls back, and swallows it
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=app, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert not errors
    committed = {f"order {n}" for n in range(0, 8, 2)}
    with psycopg.connect(shop) as conn:
        assert {o for (o,) in conn.execute("SELECT id FROM orders")} == committed
    assert wait_until(lambda: set(subjects(relay)) == committed, timeout=30), subjects(relay)
    assert wait_until(lambda: rows(shop) == 0)
    store = open_store(load(conf).server.database)
    try:
        assert wait_until(lambda: store.counts()[Status.SENT] == 4)
    finally:
        store.close()
    assert subjects(relay) == Counter(dict.fromkeys(committed, 1))


def test_a_crash_between_the_store_commit_and_the_delete_stores_each_message_once(shop, tmp_path):
    from mailmand.config import DatabaseConfig
    from mailmand.errors import QueueError

    cfg = QueueConfig(engine="postgres", dsn=shop)
    producer = open_queue(cfg)
    store = open_store(DatabaseConfig(path=tmp_path / "store.db"), create=True)
    try:
        for i in range(5):
            producer.put(mail(f"m{i}").to_record(10**6).to_json())
        with psycopg.connect(shop) as conn:  # the database refuses the delete: the daemon's ack fails
            conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN RAISE EXCEPTION 'no deletes today'; END $$")
            conn.execute(f"CREATE TRIGGER refuse BEFORE DELETE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION refuse()")
        first = open_queue(cfg, daemon=True)
        try:
            with pytest.raises(QueueError, match="no deletes today"):
                Ingester(first, store).drain()
        finally:
            first.close()
        assert sum(store.counts().values()) == 5, "stored and committed before the delete"
        assert rows(shop) == 5, "the failed delete rolled back: every row is there again"
        with psycopg.connect(shop) as conn:
            conn.execute(f"DROP TRIGGER refuse ON {TABLE}")
        second = open_queue(cfg, daemon=True)
        try:
            result = Ingester(second, store).drain()
        finally:
            second.close()
        assert (result.ingested, result.duplicates) == (0, 5)
        assert sum(store.counts().values()) == 5 and rows(shop) == 0
    finally:
        store.close()
        producer.close()


def test_a_connection_lost_while_idle_is_made_again_without_a_failure(shop):
    cfg = QueueConfig(engine="postgres", dsn=shop)
    producer, daemon = open_queue(cfg), open_queue(cfg, daemon=True)
    try:
        assert daemon.take(10) == []  # connected, and idle (no take open)
        with psycopg.connect(shop, autocommit=True) as admin:  # a server restart, as the daemon sees it
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                  "application_name = 'mailmand-outbox' AND datname = current_database()").fetchall()
        assert ended == [(True,)]
        producer.put({"id": "m1"})
        items = daemon.take(10)  # no QueueUnavailable: nothing was held, so a new connection takes
        assert [i.data for i in items] == [{"id": "m1"}]
        daemon.ack(items)
    finally:
        daemon.close()
        producer.close()


def test_rows_released_by_a_daemon_whose_store_is_down_are_free_for_another(shop):
    cfg = QueueConfig(engine="postgres", dsn=shop)
    producer = open_queue(cfg)
    stuck, other = open_queue(cfg, daemon=True), open_queue(cfg, daemon=True)
    try:
        for i in range(3):
            producer.put({"id": f"m{i}"})
        stuck.release(stuck.take(10))  # what ingest does when its store cannot take them
        items = other.take(10)
        assert [i.data["id"] for i in items] == ["m0", "m1", "m2"]  # not locked by the first any more
        other.ack(items)
    finally:
        other.close()
        stuck.close()
        producer.close()


def test_a_take_held_past_the_lease_goes_back_to_the_other_daemons(shop):
    cfg = QueueConfig(engine="postgres", dsn=shop)
    producer = open_queue(cfg)
    hung, other = open_queue(cfg, daemon=True, lease=1.0), open_queue(cfg, daemon=True)
    try:
        producer.put({"id": "m1"})
        assert len(hung.take(10)) == 1
        assert other.take(10) == []  # locked by the hung daemon's open take
        assert wait_until(lambda: len(other.take(10)) == 1, timeout=20), "the server ends a take idle past the lease"
    finally:
        other.close()
        hung.close()
        producer.close()


def test_a_database_gone_dark_fails_a_take_within_the_timeout(shop):
    target = conninfo_to_dict(shop)
    proxy = TcpProxy((str(target.get("host", "127.0.0.1")), int(target.get("port", 5432)))).up()
    cfg = QueueConfig(engine="postgres", dsn=make_conninfo(shop, host="127.0.0.1", port=str(proxy.port)), timeout=2.0)
    producer, daemon = open_queue(QueueConfig(engine="postgres", dsn=shop)), open_queue(cfg, daemon=True)
    outcome: list[object] = []
    try:
        assert daemon.take(10) == []  # connected through the proxy
        proxy.blackhole()  # TCP still answered, nothing forwarded: no error comes by itself
        producer.put({"id": "m1"})

        def take() -> None:
            try:
                outcome.append(daemon.take(10))
            except Exception as exc:
                outcome.append(exc)

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        taker.join(20)
        assert outcome and isinstance(outcome[0], QueueUnavailable), outcome or "the take hangs"
        proxy.restore()
        assert [i.data for i in daemon.take(10)] == [{"id": "m1"}]  # a new connection, and on
    finally:
        daemon.close()
        producer.close()
        proxy.down()


def test_kill_9_mid_ingest_still_delivers_each_committed_message_once(shop, smtp_server, tmp_path):
    relay = smtp_server()
    cut = TcpProxy(("127.0.0.1", relay.port))  # the relay unreachable while the first daemon runs
    conf = write_outbox_config(tmp_path / "m.yaml", shop, cut.port, server="    batch: 100\n")
    client = Client(load(conf, producer=True))
    wanted = [f"m{i:04d}" for i in range(1500)]
    try:
        with psycopg.connect(shop) as conn, conn.transaction():  # one app transaction, 1,500 mails
            for s in wanted:
                client.enqueue(mail(s), connection=conn)
    finally:
        client.close()
    store_cfg = load(conf).server.database
    # The app holds the last 100 rows locked (SKIP LOCKED passes them by), so the kill
    # lands mid-ingest whatever the machine's speed: some stored, those still in the outbox.
    holder = psycopg.connect(shop)
    holder.execute(f"SELECT id FROM {TABLE} ORDER BY id DESC LIMIT 100 FOR UPDATE").fetchall()
    first = DaemonProcess(conf)

    def stored() -> int:
        try:
            s = open_store(store_cfg)
        except Exception:
            return 0
        try:
            return sum(s.counts().values())
        finally:
            s.close()

    try:
        assert wait_until(lambda: stored() > 0, timeout=60, interval=0.005), first.log
        first.kill()
    finally:
        holder.close()
    left, kept = rows(shop), stored()
    # Mid-ingest: some in the store, some still in the outbox (killed after a store
    # commit and perhaps before its delete: then a row is both, and is ingested again).
    assert kept > 0 and left >= 100, f"the kill must land mid-ingest ({kept} stored, {left} rows left)"
    cut.up()
    second = DaemonProcess(conf).ready()
    try:
        assert wait_until(lambda: len(relay.messages) >= len(wanted), timeout=180), len(relay.messages)
        assert wait_until(lambda: rows(shop) == 0)
    finally:
        assert second.stop() == 0
        cut.down()
    assert subjects(relay) == Counter(dict.fromkeys(wanted, 1)), "each once: none lost, none twice"


def test_the_outbox_database_away_and_back_loses_nothing(shop, smtp_server, tmp_path):
    relay = smtp_server()
    target = conninfo_to_dict(shop)
    proxy = TcpProxy((str(target.get("host", "127.0.0.1")), int(target.get("port", 5432)))).up()
    dsn = with_password(shop, host="127.0.0.1", port=str(proxy.port))
    conf = write_outbox_config(tmp_path / "m.yaml", dsn, relay.port)
    daemon = DaemonProcess(conf).ready()
    app = Client(load(write_outbox_config(tmp_path / "app.yaml", shop, relay.port), producer=True))
    try:
        for i in range(20):
            app.enqueue(mail(f"before {i}"))
        assert wait_until(lambda: len(relay.messages) >= 5, timeout=30)
        proxy.down()  # mid-ingest, perhaps holding a take: the server rolls it back
        for i in range(20):  # the app's own connection still reaches its database
            app.enqueue(mail(f"during {i}"))
        assert wait_until(lambda: "ingest failed" in daemon.log, timeout=30), daemon.log
        proxy.up()
        wanted = {f"before {i}" for i in range(20)} | {f"during {i}" for i in range(20)}
        assert wait_until(lambda: set(subjects(relay)) == wanted, timeout=60), daemon.log
        assert daemon.proc.poll() is None, "the daemon lives through the outage"
        assert wait_until(lambda: "ingest failing: cleared" in daemon.log, timeout=30), daemon.log
    finally:
        app.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        proxy.down()
    assert subjects(relay) == Counter(dict.fromkeys(wanted, 1))
    assert daemon.log.count("ingest failed") == 1, "one line for the outage, then a summary"
    assert "s3cret-pw" not in daemon.log and "Traceback" not in daemon.log
