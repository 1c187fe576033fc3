"""The base every config section shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
