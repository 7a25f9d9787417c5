"""DKIM: mail a running daemon hands a real aiosmtpd relay is signed, and dkimpy's
own verifier accepts each signature, its DNS answered by a dict (`dnsfunc`):
no network. Both algorithms, a subdomain, a domain with no key, a rotation by
reload, and the keys that must be refused when the configuration loads."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import dkim
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailmand.config import load
from mailmand.dkim import from_domain, keys_for, sign
from mailmand.errors import ConfigError
from tests.conftest import run_cli
from tests.daemonproc import DaemonProcess, wait_until


class Dns:
    """TXT records by name, as dkimpy's `dnsfunc` asks for them."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}

    def publish(self, selector: str, domain: str, record: str) -> None:
        self.records[f"{selector}._domainkey.{domain}.".encode()] = record.encode()

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.records.get(name)


def rsa_key(tmp_path: Path, name: str, pkcs8: bool = False) -> tuple[Path, str]:
    """A 2048-bit RSA key in a PEM file, and its DNS record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    path = tmp_path / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def ed25519_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    """An ed25519 seed, base64, as dknewkey writes it, and its DNS record (RFC 8463)."""
    key = nacl.signing.SigningKey.generate()
    path = tmp_path / name
    path.write_text(base64.b64encode(bytes(key)).decode() + "\n")
    path.chmod(0o600)
    return path, f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(key.verify_key)).decode()}"


def dkim_block(*entries: str) -> str:
    return "    dkim:\n" + "".join(f"      - {e}\n" for e in entries)


def verified(data: bytes, dns: Dns) -> list[tuple[bytes, bytes, bytes]]:
    """(d=, s=, a=) of each signature of `data`, each verified by dkimpy (an assertion error if one fails)."""
    d = dkim.DKIM(data)
    found = []
    n = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    for i in range(n):
        assert d.verify(idx=i, dnsfunc=dns), f"signature {i} does not verify"
        found.append((d.domain, d.selector, d.signature_fields[b"a"]))
    return found


def test_a_running_daemon_signs_with_both_algorithms_and_dkimpy_verifies(tmp_path, smtp_server, write_config):
    relay = smtp_server()
    dns = Dns()
    rsa_file, rsa_record = rsa_key(tmp_path, "rsa.pem")
    ed_file, ed_record = ed25519_key(tmp_path, "ed25519.key")
    other_file, other_record = rsa_key(tmp_path, "other.pem", pkcs8=True)
    dns.publish("r1", "example.com", rsa_record)
    dns.publish("e1", "example.com", ed_record)
    dns.publish("o1", "other.example", other_record)
    conf = write_config(relay.port, extra_server=dkim_block(
        f"{{domain: example.com, selector: r1, key-file: {rsa_file}}}",
        f"{{domain: example.com, selector: e1, key-file: {ed_file}, algorithm: ed25519-sha256}}",
        f"{{domain: other.example, selector: o1, key-file: {other_file}}}"))
    daemon = DaemonProcess(conf).ready()
    try:
        for sender, subject in (("app@example.com", "both"), ("news@mail.Example.COM", "sub"),
                                ("app@other.example", "pkcs8"), ("app@unsigned.example", "none")):
            assert run_cli("send", "-c", str(conf), "--from", sender, "--to", "rcpt@x.org", "--subject", subject,
                           "--text", "Hello.\n\n.leading dot\nend\n").returncode == 0
        assert wait_until(lambda: len(relay.messages) == 4)
    finally:
        assert daemon.stop() == 0
    got = {m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]: m.data for m in relay.messages}
    assert verified(got[b"both"], dns) == [(b"example.com", b"r1", b"rsa-sha256"),
                                           (b"example.com", b"e1", b"ed25519-sha256")]
    assert verified(got[b"sub"], dns) == [(b"example.com", b"r1", b"rsa-sha256"),
                                          (b"example.com", b"e1", b"ed25519-sha256")]
    assert verified(got[b"pkcs8"], dns) == [(b"other.example", b"o1", b"rsa-sha256")]
    assert b"DKIM-Signature" not in got[b"none"]
    # A message changed in transit no longer verifies: the signature covers the body.
    assert not dkim.verify(got[b"both"].replace(b"Hello.", b"Hullo."), dnsfunc=dns)


def test_a_key_rotated_with_a_reload_signs_the_next_message(tmp_path, smtp_server, write_config):
    relay = smtp_server()
    dns = Dns()
    old_file, old_record = rsa_key(tmp_path, "old.pem")
    new_file, new_record = ed25519_key(tmp_path, "new.key")
    dns.publish("2026a", "example.com", old_record)
    dns.publish("2026b", "example.com", new_record)
    conf = write_config(relay.port, extra_server=dkim_block(
        f"{{domain: example.com, selector: 2026a, key-file: {old_file}}}"))
    daemon = DaemonProcess(conf).ready()
    try:
        assert run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "r@x.org", "--text",
                       "x").returncode == 0
        assert wait_until(lambda: len(relay.messages) == 1)
        conf.write_text(conf.read_text().replace(
            f"selector: 2026a, key-file: {old_file}}}",
            f"selector: 2026b, key-file: {new_file}, algorithm: ed25519-sha256}}"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("configuration reloaded")
        assert run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "r@x.org", "--text",
                       "x").returncode == 0
        assert wait_until(lambda: len(relay.messages) == 2)
        # A key that goes missing is refused at the reload, and the running key goes on signing.
        new_file.rename(tmp_path / "gone.key")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("configuration reload refused")
        assert run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "r@x.org", "--text",
                       "x").returncode == 0
        assert wait_until(lambda: len(relay.messages) == 3)
    finally:
        assert daemon.stop() == 0
    first, second, third = (m.data for m in relay.messages)
    assert verified(first, dns) == [(b"example.com", b"2026a", b"rsa-sha256")]
    assert verified(second, dns) == [(b"example.com", b"2026b", b"ed25519-sha256")]
    assert verified(third, dns) == [(b"example.com", b"2026b", b"ed25519-sha256")]
    assert "new.key" in daemon.log  # the reload's refusal names the file


@pytest.mark.parametrize(("make", "said"), [
    (lambda p: p / "missing.pem", "cannot read {path}: No such file or directory"),
    (lambda p: p, "cannot read {path}: Is a directory"),  # unreadable (a directory: tests run as root)
    (lambda p: (p / "empty.pem", (p / "empty.pem").write_text(""))[0], "{path} is empty"),
    (lambda p: (p / "junk.pem", (p / "junk.pem").write_text("not a key\n"))[0],
     "{path} is not a usable rsa-sha256 private key"),
])
def test_a_key_that_cannot_sign_is_a_configuration_error_naming_the_file(tmp_path, write_config, make, said):
    path = make(tmp_path)
    conf = write_config(9, extra_server=dkim_block(f"{{domain: example.com, selector: s1, key-file: {path}}}"))
    with pytest.raises(ConfigError) as caught:
        load(conf)
    assert str(caught.value).startswith(f"email.server.dkim[0].key-file: {said.format(path=path)}")
    for command in (("check-config",), ("run",)):
        done = run_cli(*command, "-c", str(conf))
        assert done.returncode == 78, done.stderr
        assert str(path) in done.stderr.decode()
    # A producer never reads the key: enqueueing goes on.
    assert run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "r@x.org", "--text",
                   "x").returncode == 0


def test_an_rsa_key_given_as_ed25519_is_refused(tmp_path, write_config):
    path, _ = rsa_key(tmp_path, "rsa.pem")
    conf = write_config(9, extra_server=dkim_block(
        f"{{domain: example.com, selector: s1, key-file: {path}, algorithm: ed25519-sha256}}"))
    with pytest.raises(ConfigError, match=r"dkim\[0\].key-file: .*rsa.pem is not a usable ed25519-sha256"):
        load(conf)


@pytest.mark.parametrize("selector", ["s1\r\nBcc: x@y", "-bad", "a..b", "sel ector"])
def test_a_selector_that_is_not_a_dns_name_is_refused(tmp_path, write_config, selector):
    path, _ = ed25519_key(tmp_path, "k")
    conf = write_config(9, extra_server=dkim_block(
        f"{{domain: example.com, selector: {selector!r}, key-file: {path}, algorithm: ed25519-sha256}}"))
    with pytest.raises(ConfigError, match=r"dkim\[0\].selector"):
        load(conf)


def test_which_keys_sign(tmp_path, write_config):
    a, _ = ed25519_key(tmp_path, "a")
    conf = write_config(9, extra_server=dkim_block(
        f"{{domain: example.com, selector: top, key-file: {a}, algorithm: ed25519-sha256}}",
        f"{{domain: mail.example.com, selector: sub, key-file: {a}, algorithm: ed25519-sha256}}"))
    entries = load(conf).server.dkim
    assert [e.selector for e in keys_for("example.com", entries)] == ["top"]
    assert [e.selector for e in keys_for("news.example.com", entries)] == ["top"]
    assert [e.selector for e in keys_for("mail.example.com", entries)] == ["sub"]
    assert [e.selector for e in keys_for("x.mail.example.com", entries)] == ["sub"]
    assert keys_for("badexample.com", entries) == [] and keys_for("example.org", entries) == []
    assert from_domain(b"From: \"Ann, B\" <ann@Mail.Example.com>\r\nTo: x@y\r\n\r\nbody") == "mail.example.com"
    assert from_domain(b"To: x@y\r\n\r\nbody") is None
    raw = b"From: a@elsewhere.org\r\nSubject: s\r\n\r\nbody\r\n"
    assert sign(raw, entries) is raw  # no key for it: the very same bytes


def test_openssl_makes_the_signature_dkimpy_would():
    import hashlib

    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

    from mailmand.dkim import openssl_sign

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pk = parse_pem_private_key(pem)
    for text in (b"", b"a header hash", bytes(range(256))):
        for algorithm in ("sha256", "sha1"):
            assert openssl_sign(hashlib.new(algorithm, text), pk) == RSASSA_PKCS1_v1_5_sign(
                hashlib.new(algorithm, text), pk)
    # And dkimpy signs with it once mailmand has signed a message.
    entry = load_entry(pem.decode())
    sign(b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n", [entry])
    assert dkim.RSASSA_PKCS1_v1_5_sign is openssl_sign


def load_entry(pem: str):
    from mailmand.config.schema import DkimConfig

    return DkimConfig(domain="example.com", selector="s", key=pem)
