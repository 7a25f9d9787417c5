"""docs/bench.png: dispatch msg/s against connections, mailmand and baseline, per sink.

`bench.dispatch` gives three kinds of row, and each is drawn as what it is:
- dispatch rows (`once()` against the bare smtplib loop at 1, 2 and 4
  connections): one line per side, one panel per sink;
- the end-to-end row (the `mailmand --once` command, process start and
  ingest included, against its own bare loop): a point of its own in its
  sink's panel, labelled with its ratio;
- the store row (`once()` on a PostgreSQL store against `once()` on a SQLite
  store, both at 4 connections): a panel of its own. Neither of its sides is
  the bare loop, so it is never drawn on the loop's line.

    python -m bench.plot [RESULTS] [OUT]   # redraw from stored results, no benchmark run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def kind(row: dict[str, Any]) -> str:
    """`dispatch`, `end_to_end` or `stores`: which comparison a dispatch result row holds."""
    if row.get("end_to_end"):
        return "end_to_end"
    if "PostgreSQL store" in row["name"]:  # bench.dispatch.store_engines
        return "stores"
    return "dispatch"


def plot(dispatch: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dispatch["rows"]
    sinks = sorted({r["sink"] for r in rows if kind(r) == "dispatch"})
    stores = [r for r in rows if kind(r) == "stores"]
    panels = len(sinks) + len(stores)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for ax, sink in zip(axes[0], sinks, strict=False):
        mine = sorted((r for r in rows if r["sink"] == sink and kind(r) == "dispatch"),
                      key=lambda r: r["connections"])
        conns = [r["connections"] for r in mine]
        ax.plot(conns, [r["baseline"]["median"] for r in mine], "o-", label="bare smtplib loop")
        ax.plot(conns, [r["mailmand"]["median"] for r in mine], "s-", label="mailmand once()")
        for r in rows:
            if r["sink"] == sink and kind(r) == "end_to_end":
                ax.plot([r["connections"]], [r["mailmand"]["median"]], "*", color="tab:green", markersize=12,
                        linestyle="none",
                        label=f"mailmand --once command, whole ({r['ratio']:.2f} × its bare loop)")
        ax.set_title(f"dispatch to {sink} ({dispatch['messages']} messages)")
        ax.set_xlabel("SMTP connections")
        ax.set_ylabel("messages/s (median)")
        ax.set_xticks(conns)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    for ax, r in zip(axes[0][len(sinks):], stores, strict=True):
        names = ["SQLite store", "PostgreSQL store"]
        values = [r["baseline"]["median"], r["mailmand"]["median"]]
        bars = ax.bar(names, values, color=["tab:gray", "tab:purple"], width=0.5)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        ax.set_title(f"mailmand once() by store, {r['sink']}, {r['connections']} connections\n"
                     f"({r.get('messages', dispatch['messages'])} messages; PostgreSQL / SQLite = {r['ratio']:.2f})",
                     fontsize="medium")
        ax.set_ylabel("messages/s (median)")
        ax.set_ylim(0, max(values) * 1.15)  # room for the labels above the bars
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results = Path(args[0]) if args else ROOT / "bench" / "results" / "latest.json"
    out = Path(args[1]) if len(args) > 1 else ROOT / "docs" / "bench.png"
    print(plot(json.loads(results.read_text())["dispatch"], out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
