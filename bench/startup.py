"""Start-up: what one `sendmail` call costs, in one run, against
the floors: Postfix's sendmail and `python -c pass`.

    python -m bench.startup [--quick] [--instructions] [--dist DIR] [--venv DIR] [--json PATH]

Targets are ratios to `python -c pass` (the interpreter's floor) from the
same venv, measured in the same run, so they hold on any machine:

- `mailmand-sendmail -t < msg` from a venv: at most 2.5x; from the packaged
  one-directory build: at most 3.5x;
- `mailmand status` on a 1,000,000-message store (venv and packaged): at most 5x.

Each round runs every command once, in turn (so a busy moment of a shared
machine falls on all of them), after one warm-up round; the table gives
medians of 20 rounds (5 with `--quick`). Also:

- `import mailmand` + `Client(...).enqueue(...)` of one message in a fresh process;
- the one-file binary's `sendmail` for comparison (it unpacks itself each time);
- sendmail once more without the producers' settings cache (every call
  parses the YAML file), to show what the cache saves;
- the `-X importtime` profiles of the venv's sendmail, client and status: the
  ten costliest top-level imports of each.

`--instructions` also runs each command once under valgrind's callgrind and
reports the instructions it executed: a count that a busy machine does not
disturb (wall time there is noisy; instructions leave out the fsync and the
page faults, which the floor pays less of).

The venv is a fresh, non-editable install of this tree (`--venv DIR` to reuse
one; `--quick` uses the running interpreter's, where an editable install adds
its import hook to every command, the floor included). The packaged build is
`dist/` from `pyinstaller build.spec` (`--dist DIR`); without one the
packaged rows are skipped. `--quick` also uses a 20,000-message store.
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
# At most this many times `python -c pass` from the same venv, in the same run.
TARGETS = {"sendmail_venv": 2.5, "sendmail_packaged": 3.5, "status_venv": 5.0, "status_packaged": 5.0}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Commands run from here, not from the checkout: `python -c` puts the working
# directory first on sys.path, and the checkout's modules would be imported
# (without .pyc files where PYTHONDONTWRITEBYTECODE is set) instead of the venv's.
CWD = tempfile.gettempdir()


Command = tuple[list[str], bytes, "dict[str, str] | None"]


def timed(commands: dict[str, Command], runs: int) -> dict[str, dict[str, float]]:
    """Median, min and max wall time of each command in ms, and its median CPU time
    (user + system), which a busy machine disturbs less. Each round runs every
    command once, in turn; the first round is a warm-up."""
    got: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(runs + 1):
        for name, (cmd, stdin, env) in commands.items():
            c0, t0 = _cpu(), time.perf_counter()
            proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120, cwd=CWD)
            took, used = (time.perf_counter() - t0) * 1000, (_cpu() - c0) * 1000
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
            if i:
                got[name].append(took)
                cpu[name].append(used)
    return {name: {"median_ms": statistics.median(got[name]), "min_ms": min(got[name]), "max_ms": max(got[name]),
                   "cpu_median_ms": statistics.median(cpu[name]), "runs": runs} for name in commands}


def instructions(commands: dict[str, Command]) -> dict[str, float]:
    """Millions of instructions each command executes (valgrind --tool=callgrind), once each."""
    out = {}
    for name, (cmd, stdin, env) in commands.items():
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                              input=stdin, capture_output=True, env=env, timeout=600, cwd=CWD)
        found = [line for line in proc.stderr.decode().splitlines() if "Collected :" in line]
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"callgrind {cmd} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
        out[name] = int(found[-1].split(":")[-1]) / 1e6
    return out


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


def run(quick: bool, dist: Path | None, venv: Path | None, count: bool = False) -> dict[str, Any]:
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
        commands: dict[str, Command] = {"python_pass": ([str(python), "-c", "pass"], b"", None)}
        postfix = shutil.which("sendmail", path="/usr/sbin")
        if postfix and Path("/etc/postfix/main.cf").exists() and \
                subprocess.run([postfix, "-t"], input=MESSAGE, capture_output=True, timeout=60).returncode == 0:
            commands["postfix_sendmail"] = ([postfix, "-t"], MESSAGE, None)
        commands["sendmail_venv"] = ([str(bindir / "mailmand-sendmail"), "-t"], MESSAGE, env)
        # The same without the settings cache: every call parses the YAML file.
        commands["sendmail_venv_uncached"] = ([str(bindir / "mailmand-sendmail"), "-t"], MESSAGE,
                                              {**env, "MAILMAND_CACHE_DIR": "none"})
        commands["client_enqueue"] = ([str(python), "-c", CLIENT], b"", env)
        commands["status_venv"] = ([str(bindir / "mailmand"), "status"], b"", env)
        if dist is not None and (dist / "mailmand-dir" / "mailmand").exists():
            links = base / "bin"
            links.mkdir()
            (links / "mailmand-sendmail").symlink_to(dist / "mailmand-dir" / "mailmand")
            commands["sendmail_packaged"] = ([str(links / "mailmand-sendmail"), "-t"], MESSAGE, env)
            commands["status_packaged"] = ([str(dist / "mailmand-dir" / "mailmand"), "status"], b"", env)
            if (dist / "mailmand").is_file():
                commands["sendmail_onefile"] = ([str(dist / "mailmand"), "sendmail", "-t"], MESSAGE, env)
        out["rows"] = rows = timed(commands, runs)
        if count:
            out["instructions_m"] = instructions({k: v for k, v in commands.items() if k != "sendmail_onefile"})
        out["importtime_top"] = {name: importtime(python, env, code) for name, code in PROFILED.items()}
    floor = rows["python_pass"]["median_ms"]
    out["verdict"] = {k: {"median_ms": round(rows[k]["median_ms"], 1), "ratio": round(rows[k]["median_ms"] / floor, 2),
                          "target_ratio": t, "met": rows[k]["median_ms"] / floor <= t}
                      for k, t in TARGETS.items() if k in rows}
    if count:
        ir = out["instructions_m"]
        for k, v in out["verdict"].items():
            v["instructions_ratio"] = round(ir[k] / ir["python_pass"], 2)
    return out


def report(out: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in out["load_average"])
    floor = out["rows"]["python_pass"]["median_ms"]
    ir = out.get("instructions_m", {})
    lines = [f"runs {out['runs']} each, interleaved; store {out['store_messages']:,} messages; venv {out['venv']}; "
             f"load average at start {load} on {out['cpus']} CPUs",
             "| command | wall median ms (min–max) | x python -c pass | CPU median ms | M instructions (x pass) |",
             "|---|---|---|---|---|"]
    for name, r in out["rows"].items():
        count = f"{ir[name]:.0f} ({ir[name] / ir['python_pass']:.2f})" if name in ir else ""
        lines.append(f"| {name} | {r['median_ms']:.1f} ({r['min_ms']:.1f}–{r['max_ms']:.1f}) | "
                     f"{r['median_ms'] / floor:.2f} | {r['cpu_median_ms']:.1f} | {count} |")
    lines.append("\n| target | wall ratio | limit | met |\n|---|---|---|---|")
    for name, v in out["verdict"].items():
        lines.append(f"| {name} | {v['ratio']} ({v['median_ms']} ms) | {v['target_ratio']} | "
                     f"{'yes' if v['met'] else 'NO'} |")
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
    p.add_argument("--instructions", action="store_true", help="also count instructions (valgrind callgrind)")
    args = p.parse_args(argv)
    out = run(args.quick, args.dist if args.dist.exists() else None, args.venv, args.instructions)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
