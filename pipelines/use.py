"""Use what was trained: answer prompts with an adapter, or export it for other servers.

    raylora generate configs/demo.yaml --prompt "What is 2 + 3?"          # the champion of register.model_name
    raylora generate configs/demo.yaml --version 3 --prompts-file prompts.jsonl
    raylora generate configs/demo.yaml --from .raylora/tune/demo/tune_result.json --prompt "Reverse 'lamp'."
    raylora export configs/demo.yaml --merged out/merged                   # a plain transformers model
    raylora export configs/demo.yaml --adapter out/adapter --alias challenger

The adapter comes from one of: ``--version N`` or ``--alias NAME``, a version of ``register.model_name`` in the
config's registry (by default the alias ``register.champion_alias``); ``--from PATH``, a TrainResult or
TuneResult JSON (the best trial's adapter). Each loads on the base, and with the quantisation, it was trained
with, as its saved config says. ``--from`` may also name an adapter directory, which loads on CONFIG's
``model`` and ``adapter`` sections. Answers go through the chat template saved with the adapter, as the
registered model's predict does (both call adapters/generation.py). A prompts file is JSONL, one
``{"prompt": "..."}`` per line, so a prompt may span lines.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adapters.export import ExportReport, check_export_dir, export_adapter, export_full_model, export_merged
from adapters.io import check_trained_dir, is_full_model_dir
from pipelines.config import ModelConfig, RayloraConfig
from pipelines.errors import ConfigError, StageError
from pipelines.models import resolve_base_model
from pipelines.register.decisions import resolve_version
from pipelines.register.stage import REGISTRATION_TAG, read_source, trained_config
from pipelines.tracking import Registry, RegistryNotFound


@dataclass(frozen=True)
class AdapterChoice:
    """Which adapter the user asked for: a registered version, an alias, or a path (at most one is set)."""

    version: int | None = None
    alias: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class AdapterSource:
    """An adapter's directory, the config it was trained with, and a line naming where it came from."""

    adapter_dir: Path
    trained: RayloraConfig  # its model and adapter sections say which base the adapter loads on, and how
    description: str

    @property
    def model_config(self) -> ModelConfig:
        """The trained-on ``model`` section with ``tiny`` resolved to the local tiny model's directory."""
        return self.trained.model.model_copy(update={"base": resolve_base_model(self.trained.model.base)})


def checked_adapter_dir(path: Path, where: str) -> Path:
    try:
        return check_trained_dir(path)
    except FileNotFoundError as err:
        raise ConfigError(f"{where}: {err}") from err


def source_from_path(cfg: RayloraConfig, path: Path) -> AdapterSource:
    if path.is_dir():
        checked_adapter_dir(path, f"--from {path}")
        return AdapterSource(path, cfg, f"adapter {path} on model.base={cfg.model.base} "
                                        f"(adapter.method={cfg.adapter.method}, as CONFIG says)")
    if not path.exists():
        raise ConfigError(f"--from {path} does not exist: pass an adapter directory, or a TrainResult or TuneResult JSON")
    found = read_source(path)
    adapter_dir = checked_adapter_dir(Path(found.train_result.adapter_path), f"the adapter of {path}")
    return AdapterSource(adapter_dir, trained_config(found.train_result, path), found.describe())


def registered_source(cfg: RayloraConfig, choice: AdapterChoice, download_dir: Path) -> AdapterSource:
    """A version of ``register.model_name`` (by number, or by alias: the champion by default), downloaded."""
    name, registry_uri = cfg.register.model_name, cfg.register.registry_uri or cfg.tracking_uri
    registry = Registry(cfg.tracking_uri, cfg.register.registry_uri)
    alias = None if choice.version else (choice.alias or cfg.register.champion_alias)
    try:
        version = resolve_version(registry, name, str(choice.version) if choice.version else alias)
        status = registry.version_tags(name, version).get(REGISTRATION_TAG, "not registered by raylora")
    except RegistryNotFound as err:
        raise ConfigError(f"{err} (registry {registry_uri}): check register.model_name and --version or --alias, "
                          "or pass --from PATH") from err
    if status != "complete":
        raise ConfigError(f"version {version} of {name} is not a complete registration ({status}): use another "
                          "version, or register the adapter again")
    files = registry.download_version(name, version, download_dir) / "artifacts"
    try:
        trained = RayloraConfig.model_validate(json.loads((files / "lineage" / "resolved_config.json").read_text()))
    except ValueError as err:
        first_line = str(err).splitlines()[0]
        raise StageError(f"version {version} of {name} carries a config this raylora cannot read ({first_line}): "
                         "use the raylora it was registered with") from err
    named = f" (alias {alias})" if alias else ""
    return AdapterSource(files / "adapter", trained, f"version {version}{named} of {name} in {registry_uri}")


@contextmanager
def adapter_source(cfg: RayloraConfig, choice: AdapterChoice) -> Iterator[AdapterSource]:
    """The chosen adapter; a registered version's files last as long as the context."""
    if choice.path is not None:
        yield source_from_path(cfg, Path(choice.path))
        return
    with tempfile.TemporaryDirectory(prefix="raylora-use-") as download_dir:
        yield registered_source(cfg, choice, Path(download_dir))


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a JSONL file, one ``{"prompt": "..."}`` per line; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts-file {path} does not exist: write one JSON line {{\"prompt\": \"...\"}} per prompt")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["prompt"]
        except (ValueError, KeyError, TypeError):
            prompt = None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"line {number} of {path} is not a JSON object with a non-empty \"prompt\" string: "
                              "write one {\"prompt\": \"...\"} per line")
        prompts.append(prompt)
    if not prompts:
        raise ConfigError(f"{path} holds no prompts: write one {{\"prompt\": \"...\"}} per line")
    return prompts


def generate(cfg: RayloraConfig, choice: AdapterChoice, prompts: list[str], *, max_new_tokens: int,
             temperature: float = 0.0) -> tuple[AdapterSource, list[str]]:
    """The chosen adapter's answer to each prompt (greedy unless ``temperature`` > 0), and where it came from."""
    from adapters.build import DTYPES, quantization_config
    from adapters.generation import generate_answers, load_adapter_model

    with adapter_source(cfg, choice) as source:
        model_cfg, adapter_cfg = source.model_config, source.trained.adapter
        model, tokenizer = load_adapter_model(
            model_cfg.base, source.adapter_dir, revision=model_cfg.revision, dtype=DTYPES[model_cfg.dtype],
            quantization=quantization_config(adapter_cfg), trust_remote_code=model_cfg.trust_remote_code)
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return source, answers


def export(cfg: RayloraConfig, choice: AdapterChoice, out: str | Path, *, merged: bool,
           force: bool = False) -> ExportReport:
    """The chosen adapter merged into its base (``merged``) or as PEFT files, with its tokenizer, in ``out``; a
    full fine-tuned model is already whole, so ``merged`` copies it and an adapter export is refused."""
    check_export_dir(Path(out), force)  # before any download or load
    with adapter_source(cfg, choice) as source:
        if is_full_model_dir(source.adapter_dir):
            if not merged:
                raise ConfigError(f"{source.description} is a full fine-tuned model (adapter.method=full): there is "
                                  "no adapter to export; use --merged OUT, which saves the whole model")
            return export_full_model(source.adapter_dir, out, base_model=source.model_config.base, force=force,
                                     source=source.description)
        if merged:
            return export_merged(source.model_config, source.trained.adapter, source.adapter_dir, out, force=force,
                                 source=source.description)
        return export_adapter(source.adapter_dir, out, base_model=source.model_config.base, force=force,
                              source=source.description)


def export_summary(report: ExportReport) -> str:
    """What `raylora export` prints: the source, the output, the merge check, and how to load the result."""
    lines = [f"adapter  {report.source}", f"{report.kind:<8} {report.out_dir}  ({len(report.files)} files)"]
    if report.merge is not None:
        lines.append(f"check    max |merged - unmerged| logit {report.merge['max_logit_diff']:.3g} (of max |logit| "
                     f"{report.merge['max_abs_logit']:.3g}) on {report.merge['probe_tokens']} probe tokens")
    if report.kind == "merged":
        lines.append(f"load     AutoModelForCausalLM.from_pretrained({report.out_dir!r})   or: vllm serve {report.out_dir}")
    else:
        lines += [f"load     PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({report.base_model!r}), "
                  f"{report.out_dir!r})",
                  f"         or: vllm serve {report.base_model} --enable-lora --lora-modules adapter={report.out_dir}"]
    return "\n".join(lines)
