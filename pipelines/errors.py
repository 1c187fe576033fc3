"""The kinds of failure the CLI knows: a bad config (exit 2), a failed stage (exit 1), Ctrl-C (exit 130)."""


class ConfigError(ValueError):
    """A configuration or usage problem the user must fix; the message names the fix. Exit code 2."""


class StageError(RuntimeError):
    """A stage could not do its work (unreadable source, empty result, ...); the message says why. Exit code 1."""


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says where the work stands and how to resume it. Exit code 130."""
