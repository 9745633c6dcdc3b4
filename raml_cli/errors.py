"""Errors a user can cause and fix.

Every engine function raises a :class:`RamlError` (or a subclass) for a problem
the user can do something about: a missing file, a wrong format, a bad option
value, an unreachable URL. Its message is one paragraph that says what went
wrong and what to do. The command line prints it without a traceback and exits
non-zero; a Python caller can catch it like any exception.
"""

from __future__ import annotations


class RamlError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-paragraph explanation."""

    exit_code: int = 2


class InputError(RamlError):
    """A bad option value, a missing input file or an unwritable output path."""


class FormatError(RamlError):
    """A file that is not in the format raml expects (embeddings, model, archive)."""


class DataError(RamlError):
    """A dataset that is missing, incomplete, corrupt or unsuitable for the task."""


class DownloadError(RamlError):
    """A download that failed on every known URL, or a checksum that did not match."""


class TrainingError(RamlError):
    """Training that cannot go on (NaN loss, a checkpoint that does not match the run)."""


class ExportError(RamlError):
    """A network that cannot be exported, or whose export's outputs differ from raml's own
    (nothing was written)."""
