"""The two kinds of failure the CLI knows: a bad config (exit 2) and a failed stage (exit 1)."""


class ConfigError(ValueError):
    """A configuration or usage problem the user must fix; the message names the fix. Exit code 2."""


class StageError(RuntimeError):
    """A stage could not do its work (unreadable source, empty result, ...); the message says why. Exit code 1."""
