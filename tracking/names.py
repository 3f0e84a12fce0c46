"""The names a sweep's runs carry in MLflow: written by the sweep (``pipeline``), read by the analysis (``analysis``).

One home for them, so that the two cannot drift apart. Imports nothing.
"""

#: The metrics of a trial's run, logged with step = epoch (0: before any update).
METRICS = ("train_acc", "test_acc", "train_loss")
#: The ``run_kind`` tag of a trial's run, and of the run an analysis logs its files to.
RUN_KIND_TRIAL = "trial"
RUN_KIND_ANALYSIS = "analysis"
#: How the ``failure_reason`` tag of a trial whose loss became non-finite begins (a result, not a fault).
DIVERGED = "diverged"
#: Params a trial's run holds only when they differ from these values (so a default trial keeps its identity).
OPTIONAL_PARAMS = {"weight_decay": 0.0, "dropout": 0.0}
#: The values of the ``weight_scale`` param that name a rule instead of a number (a std per layer from its fan-in).
NAMED_SCALES = ("he", "xavier")
