"""DKIM signing at dispatch, with dkimpy (RFC 6376; ed25519-sha256: RFC 8463).

A message is signed as it is handed to the relay, with every key configured
for its From domain (the most specific domain that has keys: `example.com`
covers `mail.example.com` unless that has keys of its own). Two keys for one
domain, an RSA and an ed25519 one, give two signatures (RFC 8463 §4 advises
both while receivers learn ed25519). The stored message is never changed: a
key rotated with a reload signs the next attempt.

Nothing is imported or parsed for a message no key matches, nor at all when
`email.server.dkim` is empty (the cost is in docs/performance.md).

dkimpy makes RSA signatures in Python (CPython's `pow`: about 7 ms for a
2048-bit key on a 2-core VM, under the GIL); OpenSSL, through `cryptography`,
makes the very same signature (PKCS#1 v1.5 is deterministic) in about 0.35 ms.
dkimpy has no public way to choose how it signs, so `_openssl` replaces the
one function its `gen_header` calls; tests/test_dkim.py checks that both give
the same bytes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from .config.schema import DkimConfig
from .errors import MailmandError
from .headers import addresses, header_specs, split_head

log = logging.getLogger(__name__)

# Header fields signed when present (RFC 6376 §5.4.1's list); a field named
# twice in h= and present once also keeps a second one from being added in
# transit (over-signing, §8.15) for the ones a replay would change.
SIGNED = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
          b"references", b"mime-version", b"content-type", b"content-transfer-encoding", b"list-unsubscribe",
          b"list-unsubscribe-post", b"sender")
OVERSIGNED = (b"from", b"subject", b"to", b"cc", b"date", b"reply-to")


def check_key(key: str, algorithm: str) -> str | None:
    """Why `key` cannot sign with `algorithm`, or None. RSA: a PEM private key
    (PKCS#1 or PKCS#8); ed25519: the base64 32-byte seed, as dknewkey writes it."""
    try:
        if algorithm == "ed25519-sha256":
            import base64

            import nacl.signing

            nacl.signing.SigningKey(base64.b64decode(key.strip(), validate=True))
        else:
            from dkim.crypto import parse_pem_private_key

            parse_pem_private_key(key.encode("ascii"))
    except Exception as exc:  # dkimpy's and nacl's errors, binascii's, a UnicodeEncodeError
        return f"{type(exc).__name__}: {exc}".rstrip(": ")
    return None


def from_domain(raw: bytes) -> str | None:
    """The domain of the message's (first) From address, lowercased; None when it has none we can read."""
    try:
        fields, _ = split_head(raw)
    except MailmandError:
        return None
    for name, value, _lines in fields:
        if name.lower() == "from":
            specs = header_specs(value.strip())
            try:
                spec = specs[0] if specs else "{1}@{2}".format(*addresses("From", value)[0])
            except (MailmandError, IndexError):
                return None
            return spec.rpartition("@")[2].rstrip(".").lower() or None
    return None


def keys_for(domain: str, entries: Sequence[DkimConfig]) -> list[DkimConfig]:
    """The entries of the most specific configured domain that is `domain` or a parent of it."""
    best: list[DkimConfig] = []
    for e in entries:
        d = e.domain.lower()
        if domain == d or domain.endswith("." + d):
            if not best or len(d) > len(best[0].domain):
                best = [e]
            elif d == best[0].domain.lower():
                best.append(e)
    return best


def sign(raw: bytes, entries: Sequence[DkimConfig]) -> bytes:
    """`raw` with a DKIM-Signature for each key of its From domain prepended; `raw` itself
    when none matches. A key that cannot sign this message (dkimpy refuses it) sends it
    unsigned, logged: a signature is worth less than the mail."""
    if not entries:
        return raw
    domain = from_domain(raw)
    chosen = keys_for(domain, entries) if domain else []
    if not chosen:
        return raw
    import dkim  # here: a daemon with no keys never loads it

    _openssl(dkim)
    present = {name.lower().encode() for name, _, _ in split_head(raw)[0]}
    headers = [h for h in SIGNED if h in present] + [h for h in OVERSIGNED if h in present]
    signatures = []
    for e in chosen:
        try:
            signatures.append(dkim.sign(raw, e.selector.encode(), e.domain.encode(), (e.key or "").encode(),
                                        signature_algorithm=e.algorithm.encode(), include_headers=headers))
        except dkim.DKIMException as exc:
            log.warning("not signed with %s._domainkey.%s: %s", e.selector, e.domain, exc)
    return b"".join(signatures) + raw


# -- RSA through OpenSSL ------------------------------------------------------------------


def _openssl(dkim: Any) -> None:
    """Have dkimpy's RSA signatures made by OpenSSL: its `gen_header` calls the
    module's RSASSA_PKCS1_v1_5_sign (checked against dkimpy 1.1.8); replaced once,
    and only while it is still dkimpy's own."""
    from dkim import crypto

    if getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None) is crypto.RSASSA_PKCS1_v1_5_sign:
        dkim.RSASSA_PKCS1_v1_5_sign = openssl_sign


def openssl_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.1) of `hash` (a hash object: its name and digest)
    with dkimpy's parsed key, by OpenSSL: what dkim.crypto.RSASSA_PKCS1_v1_5_sign returns."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    algorithm = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}[hash.name.lower()]
    k = private_key
    key = _rsa_key(k["modulus"], k["publicExponent"], k["privateExponent"], k["prime1"], k["prime2"],
                   k["exponent1"], k["exponent2"], k["coefficient"])
    return bytes(key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm)))


@functools.lru_cache(maxsize=32)
def _rsa_key(n: int, e: int, d: int, p: int, q: int, dmp1: int, dmq1: int, iqmp: int) -> Any:
    """The OpenSSL key, made (and checked) once per key: dkimpy parses the PEM for every message."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key()
