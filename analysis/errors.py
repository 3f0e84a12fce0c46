"""The one exception type of the analysis: a problem the user can fix, reported as ``error: ...``."""


class AnalysisError(Exception):
    """Bad input or an unusable tracking store; the message is one line meant for the user."""
