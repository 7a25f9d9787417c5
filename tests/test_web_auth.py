"""Who may use the web server: a real daemon, a real HTTP client, and an attacker's requests.

Each refusal is checked as the attacker would meet it: no token, a wrong one, a
stolen page's cookie replayed without its CSRF token, a form posted from another
site, a DNS-rebinding Host header.
"""

from __future__ import annotations

import re
import subprocess
from contextlib import closing

import httpx
import pytest

from mailmand.config import load
from tests.conftest import mailmand_cmd, run_cli
from tests.daemonproc import wait_until
from tests.webutil import TOKEN, free_port, web_yaml


def _unlocked(daemon) -> bool:
    """The lockout a wrong token started is over (a right token is checked again)."""
    with daemon.http() as http:
        return http.get("/api/v1/stats").status_code != 429


def login(daemon) -> tuple[httpx.Client, str]:
    """A browser's session: logged in through the form; (client with the cookie, the page's CSRF token)."""
    browser = daemon.anonymous(follow_redirects=False)
    r = browser.post("/login", data={"token": daemon.token, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    page = browser.get("/")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf, page.text
    return browser, csrf.group(1)


def test_every_route_but_healthz_needs_the_token(web_daemon):
    daemon = web_daemon()
    with daemon.anonymous(follow_redirects=False) as anon:
        assert anon.get("/healthz").status_code == 200
        r = anon.get("/api/v1/stats")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"].startswith("log in")
        # A browser is sent to the login form, and back to where it was going.
        r = anon.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
        assert anon.get("/login").status_code == 200
        r = anon.get("/messages?status=failed&to=%40example.com")
        assert r.headers["location"] == "/login?next=/messages%3Fstatus%3Dfailed%26to%3D%2540example.com"
        form = anon.get(r.headers["location"]).text
        assert 'value="/messages?status=failed&amp;to=%40example.com"' in form
    with daemon.http() as http:
        assert http.get("/").status_code == 200


def test_a_wrong_token_is_refused_then_locked_out(web_daemon):
    daemon = web_daemon()
    with httpx.Client(base_url=daemon.base, headers={"Authorization": "Bearer not-the-token-at-all"}) as wrong:
        r = wrong.get("/api/v1/stats")
        assert r.status_code == 401
        assert r.json()["error"] == "wrong token"
        # The next try, even with the right token, waits for the lockout.
        with daemon.http() as http:
            r = http.get("/api/v1/stats")
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert wait_until(lambda: _unlocked(daemon), timeout=10)
    with httpx.Client(base_url=daemon.base, headers={"Authorization": f"Basic {TOKEN}"}) as basic:
        assert basic.get("/").status_code == 401  # only Bearer
    assert "a wrong token from 127.0.0.1" in daemon.proc.log
    assert TOKEN not in daemon.proc.log
    assert TOKEN not in repr(load(daemon.config))  # the configuration's repr leaves it out


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(web_daemon):
    daemon = web_daemon()
    with daemon.anonymous(follow_redirects=False) as browser:
        r = browser.post("/login", data={"token": "wrong-token-0000000000", "next": "/"})
        assert r.status_code == 401 and "Wrong token." in r.text
        assert "set-cookie" not in r.headers
        # Locked out: the right token is not even checked until the lockout ends.
        r = browser.post("/login", data={"token": daemon.token, "next": "/"})
        assert r.status_code == 429 and "set-cookie" not in r.headers
    assert wait_until(lambda: _unlocked(daemon), timeout=10)
    with daemon.anonymous(follow_redirects=False) as browser:
        r = browser.post("/login", data={"token": daemon.token, "next": "//evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/"  # never off to another site
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Path=/" in cookie
    browser, csrf = login(daemon)
    with closing(browser):
        assert browser.get("/").status_code == 200
        session = browser.cookies["mailmand_session"]
        r = browser.post("/logout", data={"csrf": csrf})
        assert r.status_code == 303
        # The session is over on the server, not only in this browser: the old cookie is refused.
        with httpx.Client(base_url=daemon.base, cookies={"mailmand_session": session},
                          follow_redirects=False) as stolen:
            assert stolen.get("/").status_code == 303


def test_a_cookie_post_needs_its_csrf_token(web_daemon):
    daemon = web_daemon()
    browser, csrf = login(daemon)
    with closing(browser):
        # The cookie alone (what a forged form would carry): refused.
        r = browser.post("/logout")
        assert r.status_code == 403 and "CSRF" in r.text
        r = browser.post("/logout", data={"csrf": "0" * 64})
        assert r.status_code == 403
        r = browser.post("/logout", headers={"X-CSRF-Token": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")})
        assert r.status_code == 403
        # The session lives on: none of those logged it out.
        assert browser.get("/").status_code == 200


def test_a_post_from_another_site_is_refused_even_with_the_csrf_token(web_daemon):
    daemon = web_daemon()
    browser, csrf = login(daemon)
    with closing(browser):
        r = browser.post("/logout", data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "another site" in r.text
        r = browser.post("/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert browser.get("/").status_code == 200
        # The same request from the page itself passes.
        r = browser.post("/logout", data={"csrf": csrf},
                         headers={"Origin": daemon.base, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 303


def test_without_a_token_only_loopback_names_are_served(web_daemon):
    daemon = web_daemon(token=None)
    with daemon.anonymous(follow_redirects=False) as anon:
        assert anon.get("/").status_code == 200  # no login
        assert anon.get("/login").status_code == 303
        # A DNS-rebinding page reaches 127.0.0.1 under its own name.
        r = anon.get("/", headers={"Host": "evil.example"})
        assert r.status_code == 421
        assert anon.get("/", headers={"Host": "localhost:8025"}).status_code == 200
        # With no token to check, a header sent anyway is ignored (and locks no one out).
        assert anon.get("/api/v1/stats", headers={"Authorization": "Bearer anything"}).status_code == 200
        assert anon.get("/api/v1/stats").status_code == 200
        # A browser's POST without the page's CSRF token is refused, as from another site.
        r = anon.post("/logout", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "another site" in r.text
        r = anon.post("/logout", headers={"Origin": daemon.base, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 403 and "CSRF" in r.text
        # A program on this host (no browser's headers) needs nothing.
        assert anon.post("/logout").status_code == 303


@pytest.mark.parametrize("how", ["run", "check-config"])
def test_a_token_is_required_off_loopback(write_config, tmp_path, how):
    conf = write_config(free_port(), extra_server=web_yaml(free_port(), token=None).replace("127.0.0.1", "0.0.0.0"))
    if how == "run":
        r = subprocess.run(mailmand_cmd("run", "-c", str(conf)), capture_output=True, text=True, timeout=60)
        code, err = r.returncode, r.stderr
    else:
        done = run_cli("check-config", "-c", str(conf))
        code, err = done.returncode, (done.stderr + done.stdout).decode()
    assert code == 78, err
    assert "email.server.web.token" in err and "not on loopback" in err


def test_a_short_or_doubled_token_is_a_configuration_error(write_config, tmp_path):
    secret = tmp_path / "t"
    secret.write_text("x" * 32)
    secret.chmod(0o600)
    conf = write_config(free_port(), extra_server=web_yaml(free_port(), token="short"))
    conf.chmod(0o600)
    done = run_cli("check-config", "-c", str(conf))
    assert done.returncode == 78 and b"email.server.web.token: too short" in done.stderr + done.stdout
    doubled = web_yaml(free_port(), token="y" * 32) + f"      token-file: {secret}\n"
    conf = write_config(free_port(), extra_server=doubled)
    conf.chmod(0o600)
    done = run_cli("check-config", "-c", str(conf))
    assert done.returncode == 78 and b"give token or token-file, not both" in done.stderr + done.stdout
