"""The data sections: where the rows come from (``data``) and how curation filters them (``curate``)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from pydantic import Field, field_validator

from pipelines.config.base import Section


class DataSource(Section):
    path: str = Field(description="file, glob, remote URI, or 'hf://<dataset id>'")
    format: Literal["auto", "alpaca", "sharegpt", "openai", "prompt_completion"] = Field(
        "auto", description="record shape; auto detects it per record from the record's keys")
    name: str | None = Field(
        None, description="label this source's rows carry; null is the file stem (source<N> for a glob)")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="canonical field -> field in this source")
    split: str = Field("train", description="split read from an hf:// dataset; files ignore it")
    max_rows: int | None = Field(
        None, ge=1,
        description="keep at most this many of this source's rows that pass dedup and the filters (a fixed, "
        "seeded pick; the rest are dropped as over_source_cap); null keeps all")
    weight: float | None = Field(
        None, gt=0.0,
        description="this source's share of the kept rows, relative to the other sources' weights (set it on "
        "every source or none); rows beyond the share are dropped (over_source_weight), none repeated")


class DataConfig(Section):
    sources: list[DataSource] = Field(
        min_length=1,
        description="where the training rows come from: one entry per file, glob, URI or dataset")
    eval_sets: list[str] = Field(
        default_factory=list,
        description="held-out eval JSONL files ({messages: [...]} per line) curation decontaminates against")
    eval_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="fraction of the kept rows held out as the eval split")
    eval_size: int | None = Field(
        None, ge=1, description="rows held out as the eval split; wins over eval_fraction, null uses it")
    tokenizer: str | None = Field(
        None, description="tokenizer path or id whose chat template (or model.chat_template) renders the rows "
        "curation counts tokens of; null uses model.base")

    @field_validator("sources")
    @classmethod
    def _weights_on_every_source_or_none(cls, sources: list[DataSource]) -> list[DataSource]:
        weighted = [source.weight is not None for source in sources]
        if any(weighted) and not all(weighted):
            unweighted = [source.name or source.path for source, has in zip(sources, weighted, strict=True) if not has]
            raise ValueError(f"weight is set on some sources but not on {', '.join(unweighted)}: a weight is a "
                             "share of the mix, so set data.sources[*].weight on every source or on none")
        return sources


class CurateConfig(Section):
    output_dir: str = Field(
        "curated",
        description="subdirectory of workdir for train/, eval/, dropped/ Parquet and manifest.json; "
        "curation replaces it whole, and only when it succeeds")
    min_answer_chars: int = Field(
        1, ge=0,
        description="answers with fewer non-blank characters are dropped (empty_answer); 0 acts as 1")
    min_answer_ratio: float = Field(
        0.05, ge=0.0,
        description="answer chars / prompt chars below this is too short (short_answer); 0 is off")
    short_answer_min_prompt_words: int = Field(
        30, ge=1,
        description="only prompts this long are judged by min_answer_ratio ('7' answers 'What is 3 + 4?')")
    max_tokens: int | None = Field(
        None, gt=0,
        description="conversations over this many tokens are dropped (over_long); null is model.max_seq_len")
    drop_refusals: bool = Field(
        True,
        description="drop conversations whose answers refuse or say 'as an AI language model' (refusal)")
    max_repeated_ngram_fraction: float = Field(
        0.3, gt=0.0, le=1.0,
        description="answers of 12+ words whose repeated word 3-grams exceed this: dropped (repeated_ngrams)")
    max_repeated_line_fraction: float = Field(
        0.3, gt=0.0, le=1.0,
        description="answers of 3+ lines whose repeated lines exceed this: dropped (repeated_lines)")
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="ISO 639-1 allow-list; other languages are dropped (other_language); [] keeps all")
    language_min_letters: int = Field(
        60, ge=0, description="shorter texts are not judged: language id is noise there")
    language_min_confidence: float = Field(
        0.9, gt=0.0, le=1.0, description="langid probability a row needs before its language can drop it")
    drop_placeholders: bool = Field(
        True, description="drop answers that are lorem ipsum or a TODO / [insert ...] stand-in (placeholder)")
    min_echo_overlap: float | None = Field(
        0.7, gt=0.0, le=1.0,
        description="an answer whose words come from its prompt and restate its instruction, both at least "
        "this fraction, only echoes it (echoed_prompt); null is off")
    max_non_word_fraction: float | None = Field(
        0.5, gt=0.0, le=1.0,
        description="English answers with more of their letters in non-words (not in wordfreq's list nor "
        "spelt like English: keyboard mashing) are dropped (non_words); null is off")
    open_answer_min_words: int | None = Field(
        4, ge=1,
        description="an open instruction (explain, describe, write, compare, list, ...) answered in fewer "
        "words is dropped (inadequate_answer); closed questions may have one-word answers; null is off")
    refusal_classifier_threshold: float | None = Field(
        0.45, gt=0.0, lt=1.0,
        description="English answers the refusal classifier (MiniLM embeddings) scores at this probability "
        "or above are refusals or AI boilerplate (classified_refusal); null is off")
    min_answer_relatedness: float | None = Field(
        0.2, ge=-1.0, le=1.0,
        description="English answers sharing no content word with their prompt and with MiniLM cosine "
        "similarity to it below this are unrelated (unrelated_answer); null is off")
    exact_dedup: bool = Field(
        True, description="drop rows whose lower-cased, whitespace-collapsed text equals a kept row's")
    near_dedup_threshold: float | None = Field(
        0.7, gt=0.0, le=1.0,
        description="drop rows with word-shingle Jaccard >= this to a kept row; null is off")
    minhash_num_perm: int = Field(
        128, ge=16,
        description="MinHash permutations per row for near-dedup candidates: more is more exact and slower")
    shingle_words: int = Field(3, ge=1, description="words per shingle that near dedup compares")
    decontaminate_ngram: int | None = Field(
        8, ge=3, description="drop rows sharing a word n-gram this long with data.eval_sets; null is off")
    quality_top_k: int | None = Field(
        None, ge=1,
        description="keep the k best rows by quality score (answer length, turns, variety); null keeps all")
    diversity_select: int | None = Field(
        None, ge=1, description="keep this many rows, the farthest apart by embedding; null keeps all")
    embedding_model: str | None = Field(
        None, description="sentence-transformers path; defaults to the bundled MiniLM")

    @field_validator("output_dir")
    @classmethod
    def _a_subdirectory_of_the_workdir(cls, value: str) -> str:
        # curation replaces this directory whole: it must never name the workdir, one of its parents, or a
        # place outside it (mlflow.db, checkpoints and the data live there)
        path = PurePath(value.strip())
        if not path.parts or path.is_absolute() or path.anchor or ".." in path.parts:
            raise ValueError(f"must be a subdirectory inside workdir, relative and without '..' (got {value!r}), "
                             "because curation replaces it whole: set e.g. curate.output_dir=curated")
        return path.as_posix()
