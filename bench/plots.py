"""PNG plots of the daemon-level benchmarks: latency distributions (one curve per series) side by side.

matplotlib is optional (`.venv/bin/pip install matplotlib`): without it no PNG is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def distributions(path: Path, title: str, panels: Mapping[str, Mapping[str, Sequence[float]]],
                  xlabel: str = "latency (ms)", log_x: bool = False) -> bool:
    """One panel per key of `panels`, one cumulative curve per series in it; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, values in series.items():
            ordered = sorted(values)
            if ordered:
                ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction")
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def save(report: Mapping[str, Any], out: str, plot: Callable[[Path], object]) -> None:
    """Write `report` as JSON to `out` (nothing when empty) and its PNG beside it."""
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report) + "\n")
    plot(path.with_suffix(".png"))


def latency_panels(report: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """request -> elevated and check-in -> revoked, one series per stack or cost, from a stack report."""
    panels: dict[str, dict[str, list[float]]] = {"request -> elevated": {}, "check-in -> revoked": {}}
    for name, series in report["latencies"].items():
        panels["request -> elevated"][name] = series["request_to_elevated_ms"]
        panels["check-in -> revoked"][name] = series["checkin_to_revoked_ms"]
    return panels
