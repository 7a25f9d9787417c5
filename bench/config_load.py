"""What reading the configuration costs a command at start-up.

    python bench/config_load.py [--quick] [--tree DIR ...]

Each figure is the median over fresh interpreters, run interleaved so that a
busy machine slows every column alike:
- `python -c pass`: the interpreter's floor;
- `import mailmand.config`;
- `import` + `load(config/mailmand.yaml, producer=True)`: what a producer pays;
- `python -X importtime`'s own cumulative figure for `mailmand.config`;
- a warm `load(producer=True)` of each shipped file, in-process (best of 7 rounds of 50).

`--tree DIR` measures the `mailmand` package found in DIR instead of the
installed one (repeat it to compare trees side by side). Bytecode is compiled
first and written, as an installed package has it.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "mailmand.yaml"

STEPS = {
    "python -c pass": "pass",
    "import mailmand.config": "import mailmand.config",
    "import + load(mailmand.yaml)": f"import mailmand.config as c; c.load({str(SHIPPED)!r}, producer=True)",
}

WARM = f"""
import timeit, mailmand.config as c
for name in ("mailmand.yaml", "development.yaml"):
    path = {str(ROOT / "config")!r} + "/" + name
    c.load(path, producer=True)
    best = min(timeit.repeat(lambda: c.load(path, producer=True), number=50, repeat=7)) / 50
    print(name, round(best * 1e6))
"""


def env_for(tree: str | None) -> dict[str, str]:
    env = dict(os.environ, SMTP_PASSWORD="unused")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if tree:
        env["PYTHONPATH"] = tree
    return env


def run(stmt: str, tree: str | None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", stmt], env=env_for(tree), cwd="/", check=True)
    return (time.perf_counter() - start) * 1000


def importtime(tree: str | None) -> float:
    """`python -X importtime`'s cumulative figure for mailmand.config, in ms (as docs/configuration.md quotes it)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mailmand.config"], env=env_for(tree),
                          cwd="/", capture_output=True, text=True, check=True)
    for line in done.stderr.splitlines():
        _, cumulative, name = line.split("|")
        if name == " mailmand.config":  # top level: its figure includes the mailmand package under it
            return int(cumulative) / 1000
    raise RuntimeError("mailmand.config not in the -X importtime output")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 runs each instead of 31")
    ap.add_argument("--tree", action="append", default=[], help="a directory holding a mailmand package")
    args = ap.parse_args()
    runs = 5 if args.quick else 31
    trees: list[str | None] = [str(Path(t).resolve()) for t in args.tree] or [None]
    for tree in trees:
        compileall.compile_dir(str(Path(tree or ROOT) / "mailmand"), quiet=1)
    times: dict[tuple[str, str | None], list[float]] = {}
    for _ in range(runs):
        for label, stmt in STEPS.items():
            for tree in trees:
                times.setdefault((label, tree), []).append(run(stmt, tree))
        for tree in trees:
            times.setdefault(("-X importtime: mailmand.config", tree), []).append(importtime(tree))
    print(f"median wall time of {runs} fresh interpreters (ms); load average {os.getloadavg()[0]:.2f}")
    print(f"{'':32}" + "".join(f"{(t or 'installed')[-24:]:>26}" for t in trees))
    for label in [*STEPS, "-X importtime: mailmand.config"]:
        print(f"{label:32}" + "".join(f"{statistics.median(times[label, t]):26.1f}" for t in trees))
    for tree in trees:
        out = subprocess.run([sys.executable, "-c", WARM], env=env_for(tree), cwd="/", capture_output=True,
                             text=True, check=True).stdout.split()
        warm = ", ".join(f"{name} {us} µs" for name, us in zip(out[::2], out[1::2], strict=True))
        print(f"warm load() per call, {tree or 'installed'}: {warm}")


if __name__ == "__main__":
    main()
