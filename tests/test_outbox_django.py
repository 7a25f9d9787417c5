"""The outbox with a real Django project on a real PostgreSQL: `send_mail()`
inside `transaction.atomic()` is delivered if and only if the block commits.

The project is written to tmp_path and run in child processes (its own
settings, its migrations, a management command that places orders), so this
module's Django settings (test_django.py's) play no part. The outbox table
is made by the project's own migration, as docs/outbox.md shows it."""

from __future__ import annotations

import os
import sys
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest

pytest.importorskip("django", reason="Django is in the test extra: pip install -e '.[test]'")

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from tests.conftest import ROOT, run_cli  # noqa: E402
from tests.test_outbox import write_outbox_config  # noqa: E402

SETTINGS = """
import os
SECRET_KEY = "test"
INSTALLED_APPS = ["shop"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.postgresql", "NAME": {name!r}, "HOST": {host!r},
                 "PORT": {port!r}, "USER": {user!r}}},
    "local": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {sqlite!r}}},
}}
EMAIL_BACKEND = "mailmand.django.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@example.com"
MAILMAND_CONFIG = os.environ.get("SHOP_MAILMAND_CONFIG", {conf!r})
MAILMAND_DATABASE = os.environ.get("SHOP_MAILMAND_DATABASE", "default") or None
"""

MODELS = """
from django.db import models


class Order(models.Model):
    name = models.TextField(unique=True)
"""

INITIAL = """
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    operations = [migrations.CreateModel("Order", [
        ("id", models.BigAutoField(primary_key=True)), ("name", models.TextField(unique=True))])]
"""

OUTBOX = """
from django.db import migrations

from mailmand.queues import outbox_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    operations = [migrations.RunSQL(outbox_sql("mailmand_outbox"), reverse_sql='DROP TABLE "mailmand_outbox"')]
"""

COMMAND = """
import threading

from django.core.mail import send_mail
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from shop.models import Order


class Refused(Exception):
    pass


class Command(BaseCommand):
    help = "Place orders, each with its confirmation mail, each in one transaction."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="+")
        parser.add_argument("--fail", action="store_true", help="every order's transaction rolls back")
        parser.add_argument("--together", action="store_true",
                            help="one thread per order, all transactions open at once; odd ones roll back")

    def place(self, name, fail, barrier=None):
        try:
            with transaction.atomic():
                Order.objects.create(name=name)
                send_mail(name, "Thank you.", None, ["buyer@example.com"])
                if barrier is not None:
                    barrier.wait(20)
                if fail:
                    raise Refused(name)
        except Refused:
            self.stdout.write(f"rolled back {name}")
        else:
            self.stdout.write(f"committed {name}")

    def handle(self, names, fail, together, **options):
        if not together:
            for name in names:
                self.place(name, fail)
            return
        barrier = threading.Barrier(len(names))
        errors = []

        def thread(i, name):
            try:
                self.place(name, i % 2 == 1, barrier)
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()  # each thread has its own Django connection

        threads = [threading.Thread(target=thread, args=(i, n)) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
"""


@pytest.fixture
def project(postgres_dsn: str, smtp_server, tmp_path: Path):
    """The Django project on the test's database, migrated; a relay; the mailmand configuration."""
    relay = smtp_server()
    conf = write_outbox_config(tmp_path / "mailmand.yaml", postgres_dsn, relay.port)
    params = conninfo_to_dict(postgres_dsn)
    root = tmp_path / "project"
    files = {
        "shopsite/__init__.py": "",
        "shopsite/settings.py": SETTINGS.format(name=params["dbname"], host=params.get("host", "127.0.0.1"),
                                                port=str(params.get("port", "5432")),
                                                user=params.get("user", "postgres"),
                                                sqlite=str(tmp_path / "local.sqlite3"), conf=str(conf)),
        "shop/__init__.py": "",
        "shop/models.py": MODELS,
        "shop/migrations/__init__.py": "",
        "shop/migrations/0001_initial.py": INITIAL,
        "shop/migrations/0002_mailmand_outbox.py": OUTBOX,
        "shop/management/__init__.py": "",
        "shop/management/commands/__init__.py": "",
        "shop/management/commands/order.py": COMMAND,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    env = {"PYTHONPATH": f"{root}{os.pathsep}{ROOT}", "DJANGO_SETTINGS_MODULE": "shopsite.settings"}
    migrated = django(env, "migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stderr
    return relay, conf, env, postgres_dsn


def django(env: dict[str, str], *args: str, extra: dict[str, str] | None = None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "django", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env, **(extra or {})}, cwd=ROOT)


def deliver(conf: Path) -> str:
    out = run_cli("run", "--once", "-c", str(conf))
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def subjects(relay) -> Counter[str]:
    return Counter(message_from_bytes(m.data)["Subject"] for m in relay.messages)


def orders(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM shop_order")}


def test_send_mail_in_atomic_goes_out_once_if_it_commits_and_never_if_it_rolls_back(project):
    relay, conf, env, dsn = project
    failed = django(env, "order", "refused order", "--fail")
    assert failed.returncode == 0 and "rolled back refused order" in failed.stdout, failed.stderr
    placed = django(env, "order", "placed order")
    assert placed.returncode == 0 and "committed placed order" in placed.stdout, placed.stderr
    assert orders(dsn) == {"placed order"}
    assert "ingested 1, sent 1" in deliver(conf)
    assert subjects(relay) == Counter({"placed order": 1})
    assert "ingested 0, sent 0" in deliver(conf)  # nothing left behind to send again
    [msg] = relay.messages
    assert msg.mail_from == "shop@example.com" and msg.rcpt_tos == ("buyer@example.com",)


def test_eight_atomic_blocks_at_once_half_rolled_back_deliver_the_committed(project):
    relay, conf, env, dsn = project
    names = [f"order {i}" for i in range(8)]
    out = django(env, "order", *names, "--together")
    assert out.returncode == 0, out.stderr
    committed = {f"order {i}" for i in range(0, 8, 2)}
    assert orders(dsn) == committed
    assert "ingested 4, sent 4" in deliver(conf)
    assert subjects(relay) == Counter(dict.fromkeys(committed, 1))


def test_a_database_alias_that_is_not_postgresql_is_refused_clearly(project):
    relay, conf, env, dsn = project
    out = django(env, "order", "nowhere", extra={"SHOP_MAILMAND_DATABASE": "local"})
    assert out.returncode != 0
    assert "MAILMAND_DATABASE" in out.stderr and "'local'" in out.stderr and "PostgreSQL" in out.stderr
    assert orders(dsn) == set()


def test_without_the_setting_the_backend_commits_on_its_own_as_before(project):
    relay, conf, env, dsn = project
    out = django(env, "order", "refused order", "--fail", extra={"SHOP_MAILMAND_DATABASE": ""})
    assert out.returncode == 0 and "rolled back refused order" in out.stdout, out.stderr
    assert orders(dsn) == set()
    assert "ingested 1, sent 1" in deliver(conf)  # the client's own connection: not the app's transaction


def test_the_setting_with_a_queue_that_cannot_join_a_transaction_is_refused_clearly(project, write_config):
    relay, conf, env, dsn = project
    spool = write_config(relay.port, name="spool.yaml")
    out = django(env, "order", "spooled", extra={"SHOP_MAILMAND_CONFIG": str(spool)})
    assert out.returncode != 0
    assert "ImproperlyConfigured: MAILMAND_DATABASE = 'default'" in out.stderr
    assert "cannot join a database transaction" in out.stderr and "engine: postgres" in out.stderr
    assert orders(dsn) == set()
