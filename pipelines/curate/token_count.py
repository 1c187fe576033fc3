"""What curation's length filter counts with: the model section it renders conversations with, the limit, and
the counter (the model's chat template, then its tokenizer, as training renders them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipelines.curate.filter_base import Messages

if TYPE_CHECKING:
    from pipelines.config import RayloraConfig

def length_model(cfg: RayloraConfig) -> str:
    """The model section the length filter renders and counts with, as JSON (plain data for Ray tasks):
    ``model`` with ``base`` resolved, its tokenizer ``data.tokenizer`` when that is set."""
    from pipelines.models import resolve_base_model

    return cfg.model.model_copy(update={"base": resolve_base_model(cfg.data.tokenizer or cfg.model.base)}
                                ).model_dump_json()


def token_limit(cfg: RayloraConfig) -> int:
    """The length filter's limit: ``curate.max_tokens``, else ``model.max_seq_len``."""
    return cfg.curate.max_tokens or cfg.model.max_seq_len


@lru_cache(maxsize=2)
def chat_token_counter(model_json: str) -> Callable[[Sequence[Messages]], list[int | None]]:
    """Token counts of conversations as training renders them: the model's chat template
    (``adapters.tokenizer.load_counting_tokenizer``, which applies ``model.chat_template`` and does not import
    torch), then its tokenizer.
    Loaded once per process (Ray reuses its worker processes, so once per worker)."""
    from adapters.tokenizer import load_counting_tokenizer
    from pipelines.config import ModelConfig

    tokenizer = load_counting_tokenizer(ModelConfig.model_validate_json(model_json))

    def count(conversations: Sequence[Messages]) -> list[int | None]:
        if not conversations:
            return []
        try:  # one call renders and tokenises the whole batch
            return [len(ids) for ids in tokenizer.apply_chat_template(list(conversations), tokenize=True,
                                                                        return_dict=False)]
        except Exception:  # the template refused a row (e.g. a role it does not support): find which
            return [_count_one(tokenizer, messages) for messages in conversations]

    return count


def _count_one(tokenizer: Any, messages: Messages) -> int | None:
    try:
        return len(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=False))
    except Exception:  # any error of the template or tokenizer on this row: training would hit it too
        return None
