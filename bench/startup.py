"""Start-up: what one `sendmail` call costs, in one run, against
the floors: Postfix's sendmail and `python -c pass`.

    python -m bench.startup [--quick] [--dist DIR] [--venv DIR] [--json PATH]

- `mailmand-sendmail -t < msg`, median of 20, from a venv and from the
  packaged one-directory build (target: at most 50 ms each);
- `mailmand status` from the packaged build on a 1,000,000-message store
  (target: at most 100 ms);
- `import mailmand` + `Client(...).enqueue(...)` of one message in a fresh
  process (target: at most 60 ms);
- the one-file binary's `sendmail` for comparison (it unpacks itself each time);
- the `-X importtime` profiles of the venv's sendmail, client and status: the
  ten costliest top-level imports of each.
- sendmail once more without the producers' settings cache (every call
  parses the YAML file), to show what the cache saves.

The venv is a fresh, non-editable install of this tree (`--venv DIR` to reuse
one; `--quick` uses the running interpreter's, where an editable install adds
its import hook). The packaged build is `dist/` from `pyinstaller build.spec`
(`--dist DIR`); without one the packaged rows are skipped. `--quick` uses 5
runs and a 20,000-message store. Figures taken while the machine is busy are
noisy: the ratios to the floors, taken in the same run, are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: cron@example.com\nTo: ops@example.com\nSubject: startup\n\nhello\n"
CLIENT = ("import mailmand; c = mailmand.Client(); c.enqueue(mailmand.Email("
          "sender='a@example.com', to='b@example.com', text='x')); c.close()")
SETTLE = 1.0  # mailmand.config.cache.SETTLE
TARGETS_MS = {"sendmail_venv": 50, "sendmail_packaged": 50, "status_packaged": 100, "client_enqueue": 60}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Commands run from here, not from the checkout: `python -c` puts the working
# directory first on sys.path, and the checkout's modules would be imported
# (without .pyc files where PYTHONDONTWRITEBYTECODE is set) instead of the venv's.
CWD = tempfile.gettempdir()


def timed(cmd: list[str], runs: int, stdin: bytes = b"", env: dict[str, str] | None = None) -> dict[str, float]:
    """Median, min and max wall time of `cmd` in ms (one warm-up run first), and
    its median CPU time (user + system), which a busy machine disturbs less."""
    got, cpu = [], []
    for i in range(runs + 1):
        c0, t0 = _cpu(), time.perf_counter()
        proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120, cwd=CWD)
        took, used = (time.perf_counter() - t0) * 1000, (_cpu() - c0) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
        if i:
            got.append(took)
            cpu.append(used)
    return {"median_ms": statistics.median(got), "min_ms": min(got), "max_ms": max(got),
            "cpu_median_ms": statistics.median(cpu), "runs": runs}


def make_venv(where: Path) -> Path:
    """A fresh venv with this tree installed as a user would (not editable)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
    return where


def world(base: Path, messages: int) -> tuple[Path, dict[str, str]]:
    """A config, a spool as a running daemon leaves it (table made), and a store of `messages`."""
    from mailmand.queues.spool import SpoolQueue

    from .scale import generate

    spool, db = base / "spool", base / "mailmand.db"
    conf = base / "mailmand.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {spool}\n"
                    f"  server:\n    database:\n      path: {db}\n    smtp:\n      host: 127.0.0.1\n"
                    "  sendmail:\n    domain: bench.example\n")
    SpoolQueue(spool, daemon=True).close()  # the table, as the daemon creates it at start
    generate(db, messages, time.time())
    # The producers' settings cache (mailmand/config/cache.py) in the scratch
    # directory; it takes a file that has not changed for SETTLE seconds.
    env = {**os.environ, "MAILMAND_CONFIG": str(conf), "MAILMAND_CACHE_DIR": str(base / "cache")}
    env.pop("PYTHONPATH", None)
    time.sleep(max(0.0, conf.stat().st_ctime + SETTLE + 0.1 - time.time()))
    return conf, env


PROFILED = {
    "sendmail": "import sys; sys.argv = ['mailmand-sendmail', '-t']; from mailmand.cli import sendmail_main; "
                "sendmail_main()",
    "client_enqueue": CLIENT,
    "status": "import sys; from mailmand.cli import main; sys.exit(main(['status']))",
}


def importtime(python: Path, env: dict[str, str], code: str) -> list[tuple[str, float]]:
    """The ten costliest top-level imports of `code` in the venv (cumulative ms)."""
    proc = subprocess.run([str(python), "-X", "importtime", "-c", code], input=MESSAGE, capture_output=True,
                          env=env, timeout=60, cwd=CWD)
    rows = []
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):  # top level only
                rows.append((name.strip(), int(cumulative) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:10]


def run(quick: bool, dist: Path | None, venv: Path | None) -> dict[str, Any]:
    runs = 5 if quick else 20
    messages = 20_000 if quick else 1_000_000
    out: dict[str, Any] = {"runs": runs, "store_messages": messages, "rows": {},
                           "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="mailmand-startup-") as tmp:
        base = Path(tmp)
        conf, env = world(base, messages)
        if quick and venv is None:
            python = Path(sys.executable)
            out["venv"] = f"{python.parent.parent} (the running one; an editable install adds its import hook)"
        else:
            python = (venv or make_venv(base / "venv")) / "bin" / "python"
            out["venv"] = str(python.parent.parent)
        bindir = python.parent
        rows = out["rows"]
        rows["python_pass"] = timed([str(python), "-c", "pass"], runs)
        postfix = shutil.which("sendmail", path="/usr/sbin")
        if postfix and Path("/etc/postfix/main.cf").exists():
            try:
                rows["postfix_sendmail"] = timed([postfix, "-t"], runs, MESSAGE)
            except RuntimeError as exc:
                out["postfix_skipped"] = str(exc)
        rows["sendmail_venv"] = timed([str(bindir / "mailmand-sendmail"), "-t"], runs, MESSAGE, env)
        # The same without the settings cache: every call parses the YAML file.
        rows["sendmail_venv_uncached"] = timed([str(bindir / "mailmand-sendmail"), "-t"], runs, MESSAGE,
                                               {**env, "MAILMAND_CACHE_DIR": "none"})
        rows["client_enqueue"] = timed([str(python), "-c", CLIENT], runs, b"", env)
        rows["status_venv"] = timed([str(bindir / "mailmand"), "status"], runs, b"", env)
        if dist is not None and (dist / "mailmand-dir" / "mailmand").exists():
            links = base / "bin"
            links.mkdir()
            (links / "mailmand-sendmail").symlink_to(dist / "mailmand-dir" / "mailmand")
            rows["sendmail_packaged"] = timed([str(links / "mailmand-sendmail"), "-t"], runs, MESSAGE, env)
            rows["status_packaged"] = timed([str(dist / "mailmand-dir" / "mailmand"), "status"], runs, b"", env)
            if (dist / "mailmand").is_file():
                rows["sendmail_onefile"] = timed([str(dist / "mailmand"), "sendmail", "-t"], runs, MESSAGE, env)
        out["importtime_top"] = {name: importtime(python, env, code) for name, code in PROFILED.items()}
    floor = rows["python_pass"]["median_ms"]
    out["verdict"] = {k: {"median_ms": round(rows[k]["median_ms"], 1), "target_ms": t,
                          "met": rows[k]["median_ms"] <= t,
                          "over_python_pass_ms": round(rows[k]["median_ms"] - floor, 1)}
                      for k, t in TARGETS_MS.items() if k in rows}
    return out


def report(out: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in out["load_average"])
    lines = [f"runs {out['runs']} each; store {out['store_messages']:,} messages; venv {out['venv']}; "
             f"load average at start {load} on {out['cpus']} CPUs",
             "| command | wall median ms (min–max) | CPU median ms |", "|---|---|---|"]
    for name, r in out["rows"].items():
        lines.append(f"| {name} | {r['median_ms']:.1f} ({r['min_ms']:.1f}–{r['max_ms']:.1f}) | "
                     f"{r['cpu_median_ms']:.1f} |")
    lines.append("\n| target | median | limit | met |\n|---|---|---|---|")
    for name, v in out["verdict"].items():
        lines.append(f"| {name} | {v['median_ms']} ms | {v['target_ms']} ms | {'yes' if v['met'] else 'NO'} |")
    for name, top in out["importtime_top"].items():
        lines.append(f"\n{name} -X importtime, top-level imports (cumulative ms): "
                     + ", ".join(f"{n} {ms:.1f}" for n, ms in top))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dist", type=Path, default=ROOT / "dist", help="pyinstaller build.spec's output")
    p.add_argument("--venv", type=Path, help="reuse this venv (mailmand installed in it)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    out = run(args.quick, args.dist if args.dist.exists() else None, args.venv)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
