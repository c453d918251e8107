"""Render the Grafana dashboard (deploy/grafana/jit-elevation.json) as a PNG over a recorded `jitctl demo` run.

A real Prometheus scrapes the three daemons every second while the demo plays; then every panel's
queries are evaluated by that Prometheus (`query_range`, `$__rate_interval` = 10 s) and drawn with
matplotlib in the dashboard's layout. No Grafana needed.

    apt-get download prometheus && dpkg-deb -x prometheus_*.deb /tmp/prom   # the server, not installed
    .venv/bin/pip install matplotlib
    .venv/bin/python -m bench.dashboard_png --prometheus /tmp/prom/usr/bin/prometheus --out dashboard.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "jit-elevation.json"
DAEMONS = ("approval", "elevator", "reaper")
RATE_INTERVAL = "10s"


def scrape_config(metrics_port: int) -> str:
    jobs = [{"job_name": f"jit-{d}", "scrape_interval": "1s",
             "static_configs": [{"targets": [f"127.0.0.1:{metrics_port + i}"]}]} for i, d in enumerate(DAEMONS)]
    return json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs})


def query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr.replace("$__rate_interval", RATE_INTERVAL),
                                     "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as answer:  # noqa: S310
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def render(prometheus: str, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.2 * rows), squeeze=False)
    for panel, ax in zip(panels, axes.flat, strict=False):
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], start, end):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target["legendFormat"], series["metric"]), linewidth=1.4)
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_xlabel(f"seconds into the run ({panel['fieldConfig']['defaults']['unit']})", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("jit-elevation dashboard over one `jitctl demo` run (Prometheus at 1 s, rates over 10 s)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="the prometheus server binary")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    parser.add_argument("--metrics-port", type=int, default=9471, help="the daemons' ports: this and the next two")
    parser.add_argument("--listen", default="127.0.0.1:9099")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jit-prom-") as folder:
        config = Path(folder) / "prometheus.yml"
        config.write_text(scrape_config(args.metrics_port))
        server = subprocess.Popen([args.prometheus, f"--config.file={config}", f"--storage.tsdb.path={folder}/data",
                                   f"--web.listen-address={args.listen}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)
            start = time.time()
            env = {**os.environ, "JIT_METRICS_PORT": str(args.metrics_port)}
            demo = subprocess.run([str(Path(sys.executable).with_name("jitctl")), "demo"], env=env, check=False)
            end = time.time()
            time.sleep(2)  # the last scrape lands
            render(f"http://{args.listen}", start, end, args.out)
        finally:
            server.terminate()
            server.wait(10)
    print(f"wrote {args.out} (demo exit {demo.returncode})")
    return demo.returncode


if __name__ == "__main__":
    raise SystemExit(main())
