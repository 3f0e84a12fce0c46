"""The analysis stage: MLflow trial runs -> pandas -> statistics over seeds -> figures and a report.

Reads only what MLflow holds (docs/design.md); never imports ray.

- :func:`load_runs` (analysis.load): the tidy frame, one row per (run, epoch).
- analysis.stats: :func:`arm_summary`, :func:`paired_comparison`, :func:`final_summary`,
  :func:`seeds_needed`, :func:`holm`.
- analysis.figures: :func:`plot_grid`, :func:`plot_curves`, :func:`plot_final_accuracy`,
  :func:`plot_difference`, :func:`save_figure`.
- analysis.report: :func:`build_report`, :func:`findings`.
- ``python -m analysis`` (analysis.cli): all of it, plus an analysis run logged to MLflow.
"""

import os

# Before MLflow is first imported (by the modules below): no usage telemetry to MLflow's servers (nor its
# installation id written to ~/.config); the analysis reads its tracking store and talks to nothing else.
# "false" turns it back on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from analysis.errors import AnalysisError  # noqa: E402
from analysis.load import METRICS, load_runs  # noqa: E402
from analysis.stats import arm_summary, final_summary, holm, paired_comparison, seeds_needed  # noqa: E402

__all__ = [
    "METRICS",
    "AnalysisError",
    "arm_summary",
    "final_summary",
    "holm",
    "load_runs",
    "paired_comparison",
    "seeds_needed",
]
