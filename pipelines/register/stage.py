"""The register stage: the winning adapter becomes a version of ``register.model_name`` with its lineage, and
the gate decides whether ``champion`` moves to it.

    raylora register configs/demo.yaml                 # the search's best trial, or the train run of run_name
    raylora register configs/demo.yaml --from PATH     # a given TrainResult or TuneResult JSON

``register(cfg)`` is the story:

    find the adapter -> measure it on the fixed gate set -> log the model with its lineage -> register a
    version -> under the alias lock: measure the champion on the same set when it was measured on another,
    decide, point ``challenger`` (and ``champion`` when the gate holds) at the new version

Nothing that fails before the last step leaves an alias: the version is created only once every artifact is
uploaded, and the aliases move last.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.artifacts import (
    DatasetManifest,
    Registration,
    TrainResult,
    TuneResult,
    curated_manifest_path,
    tune_result_path,
)
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError, StageError
from pipelines.fingerprint import LAST_RUN_FILE
from pipelines.register.alias_lock import AliasLock
from pipelines.register.aliases import crown, move_alias
from pipelines.register.gate import GateDecision, decide, gate_set_key
from pipelines.register.lineage import MAX_TAG_CHARS, library_versions, lineage_tags, write_lineage_files
from pipelines.tracking import Registry, RegistryNotFound
from pipelines.train import TRAIN_RESULT_FILE, evaluate_adapter

REGISTRATION_FILE = "registration.json"
REGISTRATION_TAG = "raylora.registration"  # "complete", or "failed: <why>" on a version left half-way
DECISION_TAG = "raylora.gate_decision"
NO_DECISION = "no decision"  # how DECISION_TAG starts on a version whose gate decision failed
MEASURED_TAG_PREFIX = "raylora.measured."  # + gate set key: the version's metrics on that set, as JSON
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
# what the model code imports (loading and answering), found without importing it (torch, peft, transformers)
MODEL_CODE_PATHS = [Path(find_spec("adapters.generation").origin)]
INPUT_EXAMPLE = ["What is 2 + 3?"]
SERVING_LIBRARIES = ("mlflow", "torch", "transformers", "peft", "safetensors", "accelerate")
# Test-only hook, read only when RAYLORA_TEST_HOOKS=1: seconds to hold the alias lock after reading the
# champion, so that a test can make two registrations overlap where it matters
TEST_HOOKS_ENV, PAUSE_IN_LOCK_ENV = "RAYLORA_TEST_HOOKS", "RAYLORA_REGISTER_PAUSE_IN_LOCK_S"


@dataclass(frozen=True)
class Source:
    """The adapter to register: its TrainResult, and the search that chose it, if any."""

    train_result: TrainResult
    tune_result: TuneResult | None
    path: Path

    def describe(self) -> str:
        if self.tune_result is not None:
            return f"tune {self.path} (trial {self.tune_result.best_trial.get('trial_id')})"
        return f"train run {self.train_result.run_name}/{self.train_result.fingerprint}"


def read_source(path: Path) -> Source:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass a TrainResult or TuneResult JSON")
    kind = json.loads(path.read_text()).get("kind")
    if kind == "TuneResult":
        tune = TuneResult.read(path)
        return Source(TrainResult.read(tune.best_train_result), tune, path)
    if kind == "TrainResult":
        return Source(TrainResult.read(path), None, path)
    raise ConfigError(f"{path} holds a {kind}, not a TrainResult or TuneResult: pass the JSON one of them wrote")


def find_source(cfg: RayloraConfig, given: str | Path | None = None) -> Source:
    """``given``, else the newest finished result under ``run_name``: the search's TuneResult or a train run's
    TrainResult. A newer run that has not finished (failed, interrupted, still running) is named in one line,
    not taken: ``last_run.json`` names the latest run started, not the latest adapter."""
    if given is not None:
        return read_source(Path(given))
    runs = cfg.path("train", cfg.run_name)
    found = [path for path in [tune_result_path(cfg), *runs.glob(f"*/{TRAIN_RESULT_FILE}")] if path.is_file()]
    last_run = runs / LAST_RUN_FILE
    unfinished = None
    if last_run.is_file():
        fingerprint = json.loads(last_run.read_text())["fingerprint"]
        if not (runs / fingerprint / TRAIN_RESULT_FILE).is_file():
            unfinished = fingerprint
    if not found:
        started = f" (run {unfinished} started but has not finished: rerun `raylora train` to resume it)" \
            if unfinished else ""
        raise ConfigError(f"no trained adapter for run_name={cfg.run_name} under {cfg.workdir}{started}: run "
                          "`raylora train` or `raylora tune` with this config first, or pass --from PATH")
    newest = max(found, key=lambda path: path.stat().st_mtime)
    if unfinished is not None and last_run.stat().st_mtime > newest.stat().st_mtime:
        print(f"raylora register: the latest run of {cfg.run_name} ({unfinished}) has not finished (it failed, was "
              f"interrupted or is running); registering the newest finished one, {newest}", flush=True)
    return read_source(newest)


def trained_config(result: TrainResult, path: Path) -> RayloraConfig:
    """The config the adapter was trained with, as this raylora reads configs."""
    try:
        return RayloraConfig.model_validate(result.config)
    except ValueError as err:
        first_line = str(err).splitlines()[0]
        raise StageError(f"the config saved in {path} does not validate with this raylora ({first_line}): train "
                         "again with it, or register with the raylora that trained it") from err


def gate_eval_set(cfg: RayloraConfig) -> Path:
    path = cfg.gate_eval_set_path
    if path is None:
        raise ConfigError("the promotion gate is measured on a fixed eval set and data.eval_sets is empty: add one "
                          "(JSONL of {messages: [...]}) and, if several, name it in register.gate_eval_set")
    if not Path(path).is_file():
        raise ConfigError(f"the gate eval set {path} does not exist: fix data.eval_sets or register.gate_eval_set")
    return Path(path)


def with_eval_settings(trained: RayloraConfig, cfg: RayloraConfig) -> RayloraConfig:
    """The config an adapter was trained with (its base, quantisation), measured with ``cfg``'s eval settings:
    what ``gate_set_key`` keys, so every measurement under one key is comparable."""
    train = trained.train.model_copy(update={
        key: getattr(cfg.train, key)
        for key in ("eval_max_new_tokens", "eval_generate_limit", "train_on_responses_only", "micro_batch_size")})
    model = trained.model.model_copy(update={"max_seq_len": cfg.model.max_seq_len})
    return trained.model_copy(update={"train": train, "model": model})


def measured_on(registry: Registry, cfg: RayloraConfig, version: str, gate_set: Path, set_key: str) -> dict[str, float]:
    """A registered version's metrics on the gate set: recorded on the version, or measured now (its adapter
    and its training config from the registry) and recorded."""
    name = cfg.register.model_name
    tag = MEASURED_TAG_PREFIX + set_key
    recorded = registry.version_tags(name, version).get(tag)
    if recorded is not None:
        return json.loads(recorded)
    print(f"raylora register: measuring version {version} of {name} on the gate set {gate_set} (set {set_key})",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="raylora-register-") as tmp:
        files = registry.download_version(name, version, Path(tmp))
        try:
            trained = RayloraConfig.model_validate(
                json.loads((files / "artifacts" / "lineage" / "resolved_config.json").read_text()))
        except ValueError as err:
            raise StageError(f"version {version} of {name} carries a config this raylora cannot read ({err}): "
                             "measure it with the raylora it was registered with, or promote with --force") from err
        metrics = evaluate_adapter(with_eval_settings(trained, cfg), files / "artifacts" / "adapter", gate_set)
    registry.set_version_tag(name, version, tag, json.dumps(metrics))
    return metrics


def curation_report(cfg: RayloraConfig, result: TrainResult) -> DatasetManifest | None:
    """The curated manifest, when it still describes the data the adapter was trained on (same hashes)."""
    path = curated_manifest_path(cfg)
    if not path.is_file():
        return None
    manifest = DatasetManifest.read(path)
    return manifest if (manifest.train_hash, manifest.eval_hash) == (result.train_hash, result.eval_hash) else None


def serving_config(trained: RayloraConfig, cfg: RayloraConfig) -> dict[str, Any]:
    """The pyfunc model's model_config: the base by path or hub id and revision, how to load it, how to generate."""
    from pipelines.models import resolve_base_model

    quantization = None
    if trained.adapter.is_quantized:
        q = trained.adapter.quant
        quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": q.quant_type,
                        "bnb_4bit_use_double_quant": q.double_quant, "bnb_4bit_compute_dtype": q.compute_dtype,
                        "bnb_4bit_quant_storage": q.quant_storage}
    return {"base_model": resolve_base_model(trained.model.base), "base_revision": trained.model.revision,
            "dtype": trained.model.dtype, "quantization": quantization,
            "trust_remote_code": trained.model.trust_remote_code, "max_new_tokens": cfg.register.max_new_tokens}


def pip_requirements(trained: RayloraConfig) -> list[str]:
    """What loading the model needs, pinned to what trained it (a local build suffix such as +cpu dropped)."""
    versions = library_versions()
    names = [*SERVING_LIBRARIES, *(["bitsandbytes"] if trained.adapter.is_quantized else [])]
    return [f"{name}=={versions[name].split('+')[0]}" if name in versions else name for name in names]


def pause_in_lock() -> None:
    if os.environ.get(TEST_HOOKS_ENV) == "1" and os.environ.get(PAUSE_IN_LOCK_ENV):
        time.sleep(float(os.environ[PAUSE_IN_LOCK_ENV]))


def gate_and_move_aliases(registry: Registry, cfg: RayloraConfig, version: str, metrics: dict[str, float],
                          gate_set: Path, set_key: str) -> tuple[GateDecision, str | None]:
    """Under the alias lock: the new version becomes ``challenger``, and ``champion`` when it passes the gate
    against the current champion measured on the same set. Returns the decision and the champion after it."""
    r = cfg.register
    with AliasLock(registry, r.model_name, ttl_s=r.lock_ttl_s, wait_s=r.lock_wait_s) as lock:
        champion = registry.alias_version(r.model_name, r.champion_alias)
        theirs = measured_on(registry, cfg, champion, gate_set, set_key) if champion else None
        pause_in_lock()
        decision = decide(metrics, theirs, r, champion)
        registry.set_version_tag(r.model_name, version, DECISION_TAG, decision.reason[:MAX_TAG_CHARS])
        move_alias(registry, lock, r.model_name, r.challenger_alias, version, f"registered: {decision.reason}")
        if decision.promote:
            crown(registry, lock, r.model_name, r.champion_alias, version, f"gate passed: {decision.reason}")
            champion = version
    return decision, champion


def quiet_libraries() -> None:
    """No progress bars from loading weights: the terminal keeps raylora's lines."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def already_registered(registry: Registry, cfg: RayloraConfig, result: TrainResult, set_key: str,
                       source: Path) -> Registration | None:
    """The completed version of ``name`` that holds this very adapter (same run fingerprint) measured on the
    same gate set, as it stands now in the registry; None when there is none."""
    name = cfg.register.model_name
    try:
        registry.registered_model(name)
    except RegistryNotFound:
        return None
    versions = registry.versions_tagged(name, {"train.fingerprint": result.fingerprint, "gate.set_key": set_key,
                                               REGISTRATION_TAG: "complete"})
    decided = [(v, tags) for v in versions if not (tags := registry.version_tags(name, v)).get(
        DECISION_TAG, NO_DECISION).startswith(NO_DECISION)]  # an undecided one is registered again, as its error says
    if not decided:
        return None
    version, tags = decided[-1]
    aliases = sorted(alias for alias, v in registry.registered_model(name).aliases.items() if str(v) == version)
    champion = registry.alias_version(name, cfg.register.champion_alias)
    return Registration(model_name=name, version=version, aliases=aliases, promoted=champion == version,
                        reason=tags[DECISION_TAG], champion_version=champion,
                        gate_metrics=json.loads(tags[MEASURED_TAG_PREFIX + set_key]), source=str(source))


def register(cfg: RayloraConfig, source: str | Path | None = None) -> Registration:
    """Register the adapter of ``source`` (see ``find_source``) as a new version of ``register.model_name`` and
    let the gate decide on ``champion``; returns the Registration (also written as JSON)."""
    quiet_libraries()
    gate_set = gate_eval_set(cfg)
    found = find_source(cfg, source)
    result = found.train_result
    trained = trained_config(result, found.path)
    set_key = gate_set_key(cfg, gate_set)
    name = cfg.register.model_name
    registry = Registry(cfg.tracking_uri, cfg.register.registry_uri)
    if done := already_registered(registry, cfg, result, set_key, found.path):
        print(f"raylora register: {found.describe()} is already version {done.version} of {name} (measured on "
              f"set {set_key}); its aliases now: {', '.join(done.aliases) or 'none'}", flush=True)
        return done
    print(f"raylora register: measuring {found.describe()} on the gate set {gate_set} (set {set_key})", flush=True)
    metrics = evaluate_adapter(with_eval_settings(trained, cfg), result.adapter_path, gate_set)
    gate = {"eval_set": str(gate_set), "set_key": set_key, "metrics": metrics}

    run_id = tracking.create_run(cfg.tracking_uri, cfg.tracking.experiment, f"register-{result.run_name}", {
        tracking.RUN_NAME_TAG: cfg.run_name, tracking.STAGE_TAG: "register",
        tracking.FINGERPRINT_TAG: result.fingerprint})
    version, complete = None, False
    try:
        tracking.log_metrics(cfg.tracking_uri, run_id, {f"gate_{k}": v for k, v in metrics.items()})
        with tempfile.TemporaryDirectory(prefix="raylora-register-") as tmp:
            lineage = write_lineage_files(Path(tmp) / "lineage", cfg, result, found.tune_result,
                                          curation_report(cfg, result), gate)
            model_uri = tracking.log_adapter_model(
                cfg.tracking_uri, run_id, model_code=MODEL_CODE, code_paths=MODEL_CODE_PATHS,
                artifacts={"adapter": result.adapter_path, "lineage": str(lineage)},
                model_config=serving_config(trained, cfg), input_example=INPUT_EXAMPLE,
                pip_requirements=pip_requirements(trained),
                params={"source": str(found.path), "gate_set_key": set_key})
        tags = lineage_tags(trained, result, found.tune_result, gate)
        version = registry.register(name, model_uri, run_id, {**tags, MEASURED_TAG_PREFIX + set_key: json.dumps(metrics),
                                                      REGISTRATION_TAG: "in progress"})
        registry.set_version_tag(name, version, REGISTRATION_TAG, "complete")
        complete = True
        decision, champion = gate_and_move_aliases(registry, cfg, version, metrics, gate_set, set_key)
    except BaseException as err:
        # a version left half-way says so (promote refuses it); a complete one whose decision failed says that
        if version is not None:
            key, value = (DECISION_TAG, f"{NO_DECISION}: {err}") if complete else (REGISTRATION_TAG, f"failed: {err}")
            registry.set_version_tag(name, version, key, value[:MAX_TAG_CHARS])
        tracking.fail_run(cfg.tracking_uri, run_id)
        if isinstance(err, ConfigError | StageError) or not isinstance(err, Exception):
            raise
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        after = f"version {version} is registered, its gate decision is not" if complete else "no alias moved"
        raise StageError(f"registering {found.describe()} as {name} failed half-way ({type(err).__name__}: "
                         f"{first_line}); {after}: run it again") from err
    tracking.finish_run(cfg.tracking_uri, run_id, metrics={}, step=0)
    aliases = [cfg.register.challenger_alias, *([cfg.register.champion_alias] if decision.promote else [])]
    registration = Registration(model_name=name, version=version, aliases=aliases, promoted=decision.promote,
                                reason=decision.reason, champion_version=champion, gate_metrics=metrics,
                                source=str(found.path))
    registration.write(cfg.path("register", cfg.run_name, REGISTRATION_FILE))
    return registration
