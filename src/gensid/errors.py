"""The one exception family for bad user input.

Everything a user can get wrong (a config value, a data file, a saved run or checkpoint,
an item id) raises a subclass of :class:`InputError` whose message names the file, key or
value at fault. The ``gensid`` command prints that message without a traceback; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message says what is wrong and where."""


class ConfigError(InputError):
    """A config file or override names an unknown field or has a bad value."""


class DataError(InputError):
    """Bad input data; the message names the file, the line or key, and the field."""


class RunError(InputError):
    """A run directory or a saved file in it is missing, damaged or of another config."""


class GensidWarning(UserWarning):
    """Something the user should know that does not stop the run (the ``gensid`` command prints it as
    one line)."""
