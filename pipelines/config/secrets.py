"""Secrets never leave the process that was given them: every config that is logged, printed or saved is redacted.

What counts as a secret: every value under ``cluster.runtime_env.env_vars`` (where the README says to pass
``HF_TOKEN``) and the value of any key whose name looks like a token, secret, password or key. A password in an
MLflow URI is refused at config time (``MLFLOW_TRACKING_PASSWORD`` is the way: the URI is used, so it cannot be
redacted where it is needed). The job still receives them: ``cluster.runtime_env`` goes to Ray as given;
only what raylora writes down (MLflow params, TrainResult, TuneResult, lineage files, ``raylora config``) is
redacted. No fingerprint reads ``cluster.runtime_env``, so a new token is not a new run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
ENV_VARS_PATH = ("cluster", "runtime_env", "env_vars")
# a word of the key's name (HF_TOKEN, aws_secret_access_key, db-password, apiKey): `max_new_tokens` is not one
SECRET_WORDS = {"token", "secret", "secrets", "password", "passwd", "pwd", "credential", "credentials", "key", "apikey",
                "auth", "authorization"}
URI_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]+:[^/@\s]+@")


def is_secret_key(path: tuple[str, ...]) -> bool:
    """Whether the value at ``path`` (config keys from the root) is a secret."""
    under_env_vars = path[:len(ENV_VARS_PATH)] == ENV_VARS_PATH and len(path) > len(ENV_VARS_PATH)
    return under_env_vars or any(SECRET_WORDS & set(key_words(part)) for part in path)


def key_words(name: str) -> list[str]:
    """``HF_TOKEN`` -> [hf, token]; ``apiKey`` -> [api, key]."""
    return [word.lower() for word in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)]


def redact(data: Any, path: tuple[str, ...] = ()) -> Any:
    """A copy of a plain config dict (``model_dump(mode="json")``, or any part of it at ``path``) fit to write down."""
    if isinstance(data, Mapping):
        return {key: redact(value, (*path, str(key))) for key, value in data.items()}
    if isinstance(data, list):
        return [redact(value, path) for value in data]
    return REDACTED if is_secret_key(path) and data is not None else data

