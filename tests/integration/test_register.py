"""The register stage against a real ``mlflow server`` (SQLite backend, served artifacts) on 127.0.0.1, fed by a
real small train run: register, gate, promote, rollback, load by alias as a user's client would; two racing
registrations on the embedded SQLite store; a registration that fails half-way.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/integration/test_register.py -q
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.artifacts import TrainResult
from pipelines.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from pipelines.config import validate_config
from pipelines.register.alias_lock import who
from pipelines.register.aliases import alias_events
from pipelines.register.stage import (
    DECISION_TAG,
    MEASURED_TAG_PREFIX,
    PAUSE_IN_LOCK_ENV,
    REGISTRATION_TAG,
    TEST_HOOKS_ENV,
)

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["What is 2 + 3?", "Reverse the word 'lamp'."]


@dataclass(frozen=True)
class Server:
    uri: str
    artifacts: Path  # the server's --artifacts-destination


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Server:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and served artifacts. It runs in a session of its own
    so that stopping it (by the pid of the process started here, as its process group) also stops the web
    server it spawns, and nothing else; its background job runners are off."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health"
            time.sleep(0.5)
        yield Server(uri, root / "artifacts")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@dataclass(frozen=True)
class Adapters:
    config: dict  # the config that trained them (its own workdir, the session's curated data)
    curated: Path  # the session's curated data
    better: Path  # TrainResult JSON of a real small train run
    worse: Path  # the same adapter with its B matrices zeroed: the base model's answers


def zeroed_copy(result: TrainResult, out: Path) -> Path:
    """The adapter with every lora_B zeroed (so it adds nothing to the base), as a TrainResult of its own."""
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = out / "adapter"
    shutil.copytree(result.adapter_path, adapter)
    weights = adapter / "adapter_model.safetensors"
    tensors = {k: (v.zero_() if "lora_B" in k else v) for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    zeroed = dataclasses.replace(result, adapter_path=str(adapter), fingerprint=result.fingerprint + "-zeroed")
    return zeroed.write(out / "train_result.json")


@pytest.fixture(scope="module")
def adapters(trained_lora, tmp_path_factory) -> Adapters:
    """The session's trained adapter and its zeroed copy."""
    result = TrainResult.read(trained_lora.result)
    return Adapters(config=trained_lora.config, curated=trained_lora.curated, better=trained_lora.result,
                    worse=zeroed_copy(result, tmp_path_factory.mktemp("zeroed")))


def config_file(adapters: Adapters, directory: Path, tracking_uri: str | None = None, **register) -> Path:
    """The training config for registering: its own workdir, a second gate set (the first 30 rows of the eval
    set, file stem ``gate-subset``) beside the eval set, and the given register keys."""
    raw = copy.deepcopy(adapters.config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "curated").symlink_to(adapters.curated)  # the curation report travels with the lineage
    subset = directory / "gate-subset.jsonl"
    subset.write_text("".join(Path(raw["data"]["eval_sets"][0]).read_text().splitlines(keepends=True)[:30]))
    raw["data"] = {**raw["data"], "eval_sets": [*raw["data"]["eval_sets"], str(subset)]}
    raw["register"] = {**raw["register"], **register}
    raw.update(workdir=str(directory), tracking={"tracking_uri": tracking_uri})
    path = directory / "register.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass(frozen=True)
class Served:
    config: Path
    uri: str
    client: MlflowClient
    name: str


@pytest.fixture(scope="module")
def served(adapters, mlflow_server, tmp_path_factory) -> Served:
    """Through the server: the zeroed adapter registered first (version 1, the first champion) with the gate on
    the eval set, then the trained one (version 2, which the gate promotes) with the gate on another set, so
    that version 1 is measured again on that one first."""
    name = "served"
    path = config_file(adapters, tmp_path_factory.mktemp("served"), tracking_uri=mlflow_server.uri, model_name=name)
    assert main(["register", str(path), "--from", str(adapters.worse)]) == EXIT_OK
    assert main(["register", str(path), "--from", str(adapters.better), "register.gate_eval_set=gate-subset"]) == EXIT_OK
    return Served(path, mlflow_server.uri, MlflowClient(mlflow_server.uri, mlflow_server.uri), name)


def aliases(served: Served) -> dict[str, str]:
    return {alias: str(version) for alias, version in served.client.get_registered_model(served.name).aliases.items()}


def champion(served: Served) -> str:
    return aliases(served)["champion"]


def test_the_better_adapter_is_promoted_with_its_lineage(served, adapters):
    client, name = served.client, served.name
    first, second = (client.get_model_version(name, v) for v in ("1", "2"))
    assert first.tags[DECISION_TAG] == "first champion: every gate holds"
    # version 1 was measured on the eval set, then again on the subset version 2 was gated on
    subset_key = second.tags["gate.set_key"]
    assert first.tags["gate.set_key"] != subset_key
    measured = json.loads(first.tags[MEASURED_TAG_PREFIX + subset_key])
    assert measured["eval_loss"] != float(first.tags["gate.eval_loss"])
    assert f"vs champion version 1's {measured['eval_loss']:.4g}" in second.tags[DECISION_TAG]
    assert aliases(served) == {"champion": "2", "challenger": "2"}

    trained = TrainResult.read(adapters.better)
    tags = second.tags
    assert tags[REGISTRATION_TAG] == "complete"
    assert (tags["adapter.method"], tags["adapter.r"], tags["adapter.alpha"]) == ("lora", "8", "16")
    assert tags["data.train_hash"] == trained.train_hash and tags["data.eval_hash"] == trained.eval_hash
    assert tags["train.fingerprint"] == trained.fingerprint and tags["train.mlflow_run_id"] == trained.mlflow_run_id
    assert float(tags["gate.eval_loss"]) < measured["eval_loss"]
    assert tags["version.mlflow"] and tags["version.peft"] and tags["git.commit"]
    events = alias_events(tags)
    assert [(e["alias"], e["change"], e["by"]) for e in events] == [("challenger", "set", who()),
                                                                    ("champion", "set", who())]
    assert [(e["alias"], e["change"]) for e in alias_events(first.tags)] == [
        ("challenger", "set"), ("champion", "set"), ("challenger", "removed"), ("champion", "removed")]

    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    files = Path(download_artifacts(artifact_uri=client.get_model_version_download_uri(name, "2"),
                                    tracking_uri=served.uri))
    lineage = files / "artifacts" / "lineage"
    assert json.loads((lineage / "resolved_config.json").read_text()) == trained.config
    assert json.loads((lineage / "curation_report.json").read_text())["train_hash"] == trained.train_hash
    assert (files / "artifacts" / "adapter" / "adapter_model.safetensors").is_file()
    model = Model.load(files / "MLmodel")
    assert model.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert json.loads((files / "input_example.json").read_text()) == ["What is 2 + 3?"]


def test_promote_against_the_gate_needs_force_and_rollback_returns_the_champion(served, capsys):
    capsys.readouterr()
    assert main(["promote", str(served.config), "1", "--reason", "try"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "version 1 does not pass the gate" in err and "--force" in err and err.count("\n") == 1

    assert main(["promote", str(served.config), "1", "--reason", "a person's call", "--force"]) == EXIT_OK
    assert champion(served) == "1"
    moved = alias_events(served.client.get_model_version(served.name, "1").tags)[-1]
    assert moved["alias"] == "champion" and moved["change"] == "set" and moved["by"] == who()
    assert "a person's call" in moved["why"] and "--force" in moved["why"]

    assert main(["rollback", str(served.config), "--reason", "back"]) == EXIT_OK
    assert champion(served) == "2"
    back = alias_events(served.client.get_model_version(served.name, "2").tags)[-1]
    assert back["change"] == "set" and back["why"] == "rollback from version 1: back"
    assert "champion of served: version 2" in capsys.readouterr().out


LOAD_BY_ALIAS = """
import json, sys
class NoRaylora:  # the model must load where raylora is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pipelines", "adapters", "cluster"):
            raise ImportError(name)
sys.meta_path.insert(0, NoRaylora())
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
print(json.dumps(mlflow.pyfunc.load_model("models:/served@champion").predict(json.loads(sys.argv[2]))))
"""


def test_the_champion_loads_by_alias_without_raylora_and_answers_as_the_adapter_does(served, adapters,
                                                                                     tiny_model_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.train.data import end_of_turn_id

    out = subprocess.run([sys.executable, "-I", "-c", LOAD_BY_ALIAS, served.uri, json.dumps(PROMPTS)], capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    served_answers = json.loads(out.stdout.strip().splitlines()[-1])

    adapter = TrainResult.read(adapters.better).adapter_path
    tokenizer = AutoTokenizer.from_pretrained(adapter, padding_side="left")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), adapter).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in PROMPTS]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(**encoded, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id}))
    expected = [t.strip() for t in tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:],
                                                          skip_special_tokens=True)]
    assert served_answers == expected


@pytest.mark.parametrize(("target", "message"), [
    (["promote", "{cfg}", "7", "--reason", "x"], "registered model 'served' has no version '7'"),
    (["promote", "{cfg}", "@nope", "--reason", "x"], "registered model 'served' has no alias 'nope'"),
    (["rollback", "{cfg}", "register.model_name=ghost"], "registered model 'ghost' does not exist"),
])
def test_an_unknown_name_version_or_alias_is_one_line_and_exit_2(served, capsys, target, message):
    capsys.readouterr()
    assert main([a.format(cfg=served.config) for a in target]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_registration_that_fails_half_way_leaves_no_alias(served, adapters, mlflow_server, monkeypatch, capsys):
    """The server cannot store the model's files (its artifact directory is a file for the while): the
    registration fails with one line, the aliases stay where they were, no version is added."""
    import logging

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # MLflow's own logs kept to warnings, as `raylora` keeps them in a fresh process (here MLflow came first)
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    before = aliases(served)
    versions = len(served.client.search_model_versions(f"name='{served.name}'"))
    kept = mlflow_server.artifacts.with_name("artifacts-kept")
    mlflow_server.artifacts.rename(kept)
    mlflow_server.artifacts.write_text("not a directory")
    try:
        mlflow_logger.setLevel(logging.WARNING)
        capsys.readouterr()
        assert main(["register", str(served.config), "--from", str(adapters.better)]) == EXIT_FAILURE
    finally:
        mlflow_logger.setLevel(level)
        mlflow_server.artifacts.unlink()
        kept.rename(mlflow_server.artifacts)
    err = capsys.readouterr().err
    assert "failed half-way" in err and "no alias moved" in err and err.count("\n") == 1, err
    assert aliases(served) == before
    assert len(served.client.search_model_versions(f"name='{served.name}'")) == versions
    failed = served.client.search_runs(
        [served.client.get_experiment_by_name("raylora").experiment_id],
        filter_string="tags.`raylora.stage` = 'register'", order_by=["attributes.start_time DESC"], max_results=1)
    assert failed[0].info.status == "FAILED"


def test_two_registrations_racing_end_with_one_champion_the_better(adapters, tmp_path):
    """Two processes register at once on the embedded SQLite store; each holds the alias lock for 3 s after
    reading the champion, so without the lock both would see no champion and both would crown themselves."""
    path = config_file(adapters, tmp_path / "race", model_name="race")
    env = {**os.environ, TEST_HOOKS_ENV: "1", PAUSE_IN_LOCK_ENV: "3", "PYTHONPATH": str(REPO)}
    racers = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "register", str(path), "--from", str(source)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for source in (adapters.worse, adapters.better)]
    outputs = [racer.communicate(timeout=600)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [EXIT_OK, EXIT_OK], "\n".join(o[-2000:] for o in outputs)
    assert "database is locked" not in "".join(outputs)

    uri = validate_config(yaml.safe_load(path.read_text())).tracking_uri
    client = MlflowClient(uri, uri)
    versions = {v.version: v for v in client.search_model_versions("name='race'")}
    better = next(v for v in versions.values() if v.tags["train.fingerprint"] == TrainResult.read(
        adapters.better).fingerprint)
    assert str(client.get_registered_model("race").aliases["champion"]) == str(better.version)
    decisions = sorted(v.tags[DECISION_TAG] for v in versions.values())
    assert decisions[1] == "first champion: every gate holds", "one decided first, alone"
    assert "vs champion version" in decisions[0], "the other saw the first one's champion"
