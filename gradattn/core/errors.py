"""The one exception type a user sees: a message naming what was wrong and what is allowed."""


class GradattnError(Exception):
    """A problem in the user's input or environment, reported as one line and exit code 2."""


class ConfigError(GradattnError, ValueError):
    """A bad value in params.yaml (or a -S override)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line
    reports of errors raised by other libraries."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
