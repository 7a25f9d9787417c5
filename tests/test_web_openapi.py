"""The OpenAPI document is true: schemathesis sends what it describes (and what it
does not) to a live daemon and checks every answer against it."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance, response_schema_conformance

from mailmand.web.openapi import document
from tests.daemonproc import DaemonProcess, wait_until
from tests.webutil import TOKEN, free_port, web_yaml

schema = schemathesis.openapi.from_dict(copy.deepcopy(document()))  # it resolves references in place
# About 10 s on a loaded 2-core machine: up to 100 cases for each of the dozen operations.
EXAMPLES = int(os.environ.get("MAILMAND_SCHEMATHESIS_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp("openapi")
    secret = where / "token"
    secret.write_text(TOKEN)
    secret.chmod(0o600)
    port = free_port()
    conf = where / "mailmand.yaml"
    conf.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: spool\n      path: {where / 'spool'}\n"
        "  server:\n"
        f"    database:\n      engine: sqlite3\n      path: {where / 'mailmand.db'}\n"
        f"    smtp:\n      host: 127.0.0.1\n      port: {free_port()}\n      tls: none\n"
        + web_yaml(port, token=None, token_file=secret))
    proc = DaemonProcess(conf).ready()
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: httpx.get(base + "/healthz").status_code == 200), proc.log
        yield base
    finally:
        proc.stop()
    assert "Traceback" not in proc.log, proc.log
    assert "wrong token" not in proc.log, "a lockout made the cases after it meet 429s"


def test_the_served_document_is_the_one_checked(daemon):
    r = httpx.get(daemon + "/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json() == document()
    assert r.json()["openapi"].startswith("3.1")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_does_what_its_document_says(daemon, case):
    # Accepting every body the schema allows is not a promise: an address is a string to
    # the schema and must parse to the door (those are 422, and documented so). Wrong tokens
    # are test_web_auth.py's: here they would lock the client out, and every case after
    # would meet a 429.
    case.call_and_validate(base_url=daemon, headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=[positive_data_acceptance, ignored_auth])


def test_schemathesis_catches_a_lie(daemon):
    """The check has teeth: a document that promises a field the API does not give fails it."""
    lying = copy.deepcopy(document())
    lying["components"]["schemas"]["Accepted"]["required"].append("status")
    bad = schemathesis.openapi.from_dict(lying)
    operation = bad["/api/v1/messages"]["POST"]
    case = operation.Case(body={"from": "a@example.com", "to": "b@example.com", "text": "x"},
                          media_type="application/json")
    r = case.call(base_url=daemon, headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(BaseExceptionGroup, match="Response violates schema"):
        case.validate_response(r, checks=[response_schema_conformance])
