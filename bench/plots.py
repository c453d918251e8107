"""PNG plots of the daemon-level benchmarks: latency distributions (one curve per series) side by side.

matplotlib is optional (`.venv/bin/pip install matplotlib`): without it no PNG is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


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
