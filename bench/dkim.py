"""What DKIM signing costs dispatch.

    python -m bench.dkim [--quick]

1. Per message, in-process: `mailmand.dkim.sign` of the benchmark message (~2 KB)
   and of one with a 100 KB attachment, with no key configured (the baseline),
   with keys for another domain only, with a 2048-bit RSA key, an ed25519 key,
   and both (best of 5 rounds, µs per message, and the ratio to the baseline).
2. End to end: `Daemon.once()` over N due messages to a loopback sink (smtp-sink
   where installed, else aiosmtpd), with an RSA key for the sender's domain
   against the same run with none, interleaved (ABBA), msg/s and the ratio.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from mailmand.config.schema import DkimConfig
from mailmand.daemon import Daemon
from mailmand.dkim import sign
from mailmand.message import Email

from .common import ab, config, email, environment, have_smtp_sink, row, sink, workdir
from .dispatch import make_store


def keys() -> dict[str, tuple[DkimConfig, ...]]:
    import nacl.signing
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    seed = base64.b64encode(bytes(nacl.signing.SigningKey.generate())).decode()
    r = DkimConfig(domain="example.com", selector="r", key=pem)
    e = DkimConfig(domain="example.com", selector="e", key=seed, algorithm="ed25519-sha256")
    other = DkimConfig(domain="other.example", selector="o", key=pem)
    return {"no key": (), "keys for another domain": (other,), "rsa-sha256 2048": (r,),
            "ed25519-sha256": (e,), "both": (r, e)}


def per_message(number: int) -> list[dict[str, Any]]:
    small = email().to_record(10**8).raw
    attached = Email(sender="bench@example.com", to="sink@example.com", subject="attached", text="see attached")
    attached.attach(bytes(range(256)) * 400, "data.bin", "application/octet-stream")
    big = attached.to_record(10**8).raw
    out = []
    for name, entries in keys().items():
        for label, raw in (("2 KB", small), ("100 KB attachment", big)):
            best = min(timeit.repeat(lambda raw=raw, entries=entries: sign(raw, entries), number=number,
                                     repeat=5)) / number
            out.append({"keys": name, "message": label, "us": best * 1e6})
    base = {r["message"]: r["us"] for r in out if r["keys"] == "no key"}
    for r in out:
        r["ratio"] = r["us"] / base[r["message"]]
    return out


def end_to_end(n: int, rounds: int) -> dict[str, Any]:
    kind = "smtp-sink" if have_smtp_sink() else "aiosmtpd"
    rsa_key = keys()["rsa-sha256 2048"]
    with workdir() as base, sink(kind) as port:
        template = base / "template.db"
        make_store(template, n)

        def once(dkim: tuple[DkimConfig, ...]) -> float:
            with workdir(base) as root:
                cfg = config(root, port, 4)
                cfg = type(cfg)(queue=cfg.queue, server=_with(cfg.server, dkim))
                shutil.copy(template, cfg.server.database.path)
                daemon = Daemon(cfg)
                saved, sys.stderr = sys.stderr, open("/dev/null", "w")  # noqa: SIM115
                try:
                    t0 = time.perf_counter()
                    result = daemon.once()
                    dt = time.perf_counter() - t0
                finally:
                    sys.stderr.close()
                    sys.stderr = saved
                    daemon.close()
                if result.dispatched.sent != n:
                    raise RuntimeError(f"sent {result.dispatched.sent} of {n}")
                return n / dt

        signed, plain = ab(rounds, lambda: once(rsa_key), lambda: once(()))
    return {"sink": kind, "messages": n, **row("dispatch, RSA-signed vs unsigned", signed, plain)}


def _with(server: Any, dkim: tuple[DkimConfig, ...]) -> Any:
    from msgspec.structs import replace

    return replace(server, dkim=dkim)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    micro = per_message(20 if args.quick else 100)
    e2e = end_to_end(500 if args.quick else 3000, 2 if args.quick else 4)
    print(f"# DKIM signing ({environment()['when']})\n")
    print("| keys | message | µs/message | ratio to no key |\n|---|---|---|---|")
    for r in micro:
        print(f"| {r['keys']} | {r['message']} | {r['us']:.1f} | {r['ratio']:.1f} |")
    a, b = e2e["mailmand"], e2e["baseline"]
    print(f"\ndispatch of {e2e['messages']} to {e2e['sink']}: signed {a['median']:.0f} msg/s "
          f"({a['min']:.0f}–{a['max']:.0f}), unsigned {b['median']:.0f} ({b['min']:.0f}–{b['max']:.0f}): "
          f"ratio **{e2e['ratio']:.2f}**")
    out = Path(__file__).resolve().parent / "results" / "dkim.json"
    out.write_text(json.dumps({"micro": micro, "dispatch": e2e, "env": environment()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
