"""Metrics: WORKDIR/metrics.jsonl (one object per logged step), TensorBoard when available, PNG plots.

Only process 0 writes. On resume, lines of steps after the restored step are dropped first, so the file
reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger("quant")

PLOTS = {
    "reward": ["reward/mean"],
    "accuracy": ["accuracy"],
    "lengths": ["completion_len/mean", "think_len/mean"],
    "kl": ["kl"],
}


def _clean(v):
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True, start_step: int = 0, tensorboard: bool = True):
        """start_step: steps already done (restored); logged lines of later steps are dropped."""
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep only the steps the restored state has done
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", -1) <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional dependency
                self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(workdir: str | Path, groups: dict[str, Iterable[str]] | None = None) -> list[Path]:
    """Writes one PNG per group of metrics (plus every eval/ metric) to WORKDIR/plots; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read(workdir)
    out_dir = Path(workdir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = dict(groups or PLOTS)
    # eval/<dataset>/<metric> -> one plot per dataset; eval/<dataset>/d<k>/<metric> (graded tasks) -> one
    # plot per metric with a line per level
    for k in sorted({k for r in rows for k in r if k.startswith("eval/")}):
        parts = k.split("/")
        if len(parts) == 4 and parts[2][:1] == "d" and parts[2][1:].isdigit():
            groups.setdefault(f"eval_{parts[1]}_{parts[3]}_by_level", []).append(k)
        elif len(parts) == 3:
            groups.setdefault(f"eval_{parts[1]}", []).append(k)
    written = []
    for name, keys in groups.items():
        series = {k: [(r["step"], r[k]) for r in rows if r.get(k) is not None] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k, pts in series.items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=k)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def summary_table(before: dict, after: dict) -> str:
    """Markdown: evaluation before -> after training, per data set (and per difficulty when there is one)."""
    lines = []
    for tag, b in before.items():
        a = after.get(tag)
        if a is None:
            continue
        lines.append(f"### {tag}\n")
        levels = [k for k in b if isinstance(b[k], dict) and "accuracy" in b[k]]
        if levels:  # graded task: one row per difficulty, then all
            lines.append("| level | accuracy | share that thinks | thinking tokens |")
            lines.append("|---|---|---|---|")
            for key, bb, aa in [(k, b[k], a[k]) for k in levels] + [("all", b, a)]:
                lines.append(f"| {key} | {bb['accuracy']:.2f} → {aa['accuracy']:.2f} | "
                             f"{bb['think_rate']:.2f} → {aa['think_rate']:.2f} | "
                             f"{bb['think_len']:.1f} → {aa['think_len']:.1f} |")
        else:
            keys = [k for k in b.get("metrics", {}) if isinstance(b["metrics"][k], (int, float))]
            lines.append("| metric | before | after |")
            lines.append("|---|---|---|")
            for k in keys:
                lines.append(f"| {k} | {b['metrics'][k]:.3f} | {a['metrics'].get(k, float('nan')):.3f} |")
        lines.append("")
    return "\n".join(lines)
