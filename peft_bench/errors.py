"""Errors that the user can fix: printed as one paragraph, without a traceback."""


class UserError(Exception):
    """Bad input (a path, a name, a file): the message says what was wrong and how to fix it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops and is recorded as failed."""
