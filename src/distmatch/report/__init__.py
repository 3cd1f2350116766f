"""Run reports: PNG figures (plots) and one self-contained HTML page (html).

The plot functions are imported lazily so that writing an HTML page, or importing this package from the CLI,
does not pay for importing matplotlib.
"""
from __future__ import annotations

from distmatch.report.html import metrics_table, render_report, write_report

_PLOTS = ("scatter_panels", "image_grid_panels", "curves", "metric_bars")

__all__ = ["metrics_table", "render_report", "write_report", *_PLOTS]


def __getattr__(name: str):
    if name in _PLOTS:
        from distmatch.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'distmatch.report' has no attribute {name!r}")
