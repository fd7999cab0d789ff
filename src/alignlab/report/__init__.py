"""The run report: plots and one self-contained HTML page, from the run folder only.

    >>> from alignlab.report import build_report
    >>> build_report("runs/demo")          # -> runs/demo/report/report.html (+ summary.json)

matplotlib (the ``report`` extra) is imported only when figures are drawn.
"""

from alignlab.report.build import build_report, collect, render_html
from alignlab.report.figures import render_figure, save_figures

__all__ = ["build_report", "collect", "render_figure", "render_html", "save_figures"]
