"""The one base class of every expected error: bad input, a missing file or run, an unreachable service.

Each module raises its own subclass (ConfigError, DataError, TrackingError, ...) with a message that says
what is wrong and how to fix it; the CLI catches ProjectError, prints the message and exits non-zero, so a
user never sees a traceback for a mistake they can fix. Anything else is a bug and keeps its traceback.
"""


class ProjectError(Exception):
    """An expected failure whose message is meant for the user (names the field, file or line and the fix)."""
