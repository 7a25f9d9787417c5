"""docs/bench.png: dispatch msg/s against connections, mailmand and baseline, per sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(dispatch: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sinks = sorted({r["sink"] for r in dispatch["rows"]})
    fig, axes = plt.subplots(1, len(sinks), figsize=(5.5 * len(sinks), 4), squeeze=False)
    for ax, sink in zip(axes[0], sinks, strict=True):
        rows = [r for r in dispatch["rows"] if r["sink"] == sink and not r.get("end_to_end")]
        shipped = rows
        conns = [r["connections"] for r in shipped]
        ax.plot(conns, [r["baseline"]["median"] for r in shipped], "o-", label="bare smtplib loop")
        ax.plot(conns, [r["mailmand"]["median"] for r in shipped], "s-", label="mailmand once()")
        ax.set_title(f"dispatch to {sink} ({dispatch['messages']} messages)")
        ax.set_xlabel("SMTP connections")
        ax.set_ylabel("messages/s (median)")
        ax.set_xticks(conns)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
