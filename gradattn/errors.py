"""The one exception type a user sees: a message naming what was wrong and what is allowed."""


class GradattnError(Exception):
    """A problem in the user's input or environment, reported as one line and exit code 2."""


class ConfigError(GradattnError, ValueError):
    """A bad value in params.yaml (or a -S override)."""
