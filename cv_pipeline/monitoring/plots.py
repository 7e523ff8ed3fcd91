"""Monitoring figures: reference against current distributions, and latency over time (PNG bytes)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Mapping, Sequence

import numpy as np

from cv_pipeline.evaluation.plots import figure_png, new_figure


def distributions_png(reference: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
                      names: Sequence[str], title: str = "Input statistics: reference vs current") -> bytes:
    """One panel per statistic: the reference's and the window's histograms on shared bins (density)."""
    names = [name for name in names if name in reference and name in current][:8] or ["(none)"]
    columns = min(4, len(names))
    rows = (len(names) + columns - 1) // columns
    figure = new_figure(3.0 * columns, 2.3 * rows + 0.4)
    figure.suptitle(title, fontsize=10)
    for k, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, k + 1)
        ref = np.asarray(reference.get(name, []), dtype=float)
        cur = np.asarray(current.get(name, []), dtype=float)
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        if ref.size and cur.size:
            bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=24)
            axes.hist(ref, bins=bins, density=True, alpha=0.55, label=f"reference ({ref.size})", color="#4a78b5")
            axes.hist(cur, bins=bins, density=True, alpha=0.55, label=f"current ({cur.size})", color="#d9822b")
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=7)
        if k == 0:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return figure_png(figure)


def categories_png(reference: Sequence[str], current: Sequence[str], title: str = "Predicted classes") -> bytes:
    """Share of each predicted category, reference beside current."""
    ref, cur = Counter(map(str, reference)), Counter(map(str, current))
    names = sorted(set(ref) | set(cur)) or ["(none)"]
    x = np.arange(len(names))
    figure = new_figure(max(4.0, 0.7 * len(names) + 2), 3.0)
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(x - 0.2, [ref[n] / max(sum(ref.values()), 1) for n in names], 0.4, label="reference", color="#4a78b5")
    axes.bar(x + 0.2, [cur[n] / max(sum(cur.values()), 1) for n in names], 0.4, label="current", color="#d9822b")
    axes.set_xticks(x, labels=names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("share")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def latency_png(points: Sequence[tuple[datetime, float]], slo_ms: float | None = None,
                title: str = "Latency per request") -> bytes:
    """Each request's latency at its time, with the p95 SLO as a line."""
    figure = new_figure(6.0, 2.8)
    axes = figure.add_subplot(1, 1, 1)
    if points:
        times = [time for time, _ in points]
        axes.plot(times, [value for _, value in points], ".", markersize=3, color="#4a78b5")
        figure.autofmt_xdate()
    if slo_ms is not None:
        axes.axhline(slo_ms, color="#c53030", linestyle="--", linewidth=1, label=f"p95 SLO {slo_ms:.0f} ms")
        axes.legend(fontsize=8)
    axes.set_ylabel("ms")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure_png(figure)
