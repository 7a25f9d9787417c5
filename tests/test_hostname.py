"""The mail domain: /etc/mailname, else the FQDN, else the hostname, never localhost."""

from __future__ import annotations

from mailmand.hostname import mail_domain, pick


def test_mailname_wins() -> None:
    assert pick("Mail.Example.COM.\n", "vm1.corp.example", "vm1") == "mail.example.com"


def test_fqdn_before_hostname() -> None:
    assert pick(None, "vm1.corp.example", "vm1") == "vm1.corp.example"
    assert pick("", "localhost", "vm1") == "vm1"


def test_localhost_is_never_the_answer() -> None:
    assert pick("localhost\n", "localhost.localdomain", "localhost") == "mailmand.invalid"


def test_this_host() -> None:
    assert mail_domain() not in ("", "localhost") and "localhost." not in mail_domain()
