"""DKIM signing at dispatch, with dkimpy (RFC 6376; ed25519-sha256: RFC 8463).

A message is signed as it is handed to the relay, with every key configured
for its From domain (the most specific domain that has keys: `example.com`
covers `mail.example.com` unless that has keys of its own). Two keys for one
domain, an RSA and an ed25519 one, give two signatures (RFC 8463 §4 advises
both while receivers learn ed25519). The stored message is never changed: a
key rotated with a reload signs the next attempt.

Nothing is imported or parsed for a message no key matches, nor at all when
`email.server.dkim` is empty (the cost is in docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
