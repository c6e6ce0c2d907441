"""The errors diffgen raises for things a user can fix.

The core raises these with a message that says what is wrong and how to fix it; the CLI prints the
message as one line and exits with `exit_code`, without a traceback.
"""


class DiffgenError(Exception):
    """Something the user can act on: a bad file, a bad option, a model that does not fit."""

    exit_code = 1


class OptionError(DiffgenError):
    """An option value that is out of range or contradicts another one."""

    exit_code = 2


class CheckpointError(DiffgenError):
    """A model file that is missing, corrupt, from another tool, or for another task."""


class ImageError(DiffgenError):
    """An image file that cannot be read or written."""


class DataError(DiffgenError):
    """A training data folder that cannot be used."""


class TrainingInterrupted(DiffgenError):
    """Training stopped on a signal after saving; the message holds the resume command."""

    exit_code = 130
