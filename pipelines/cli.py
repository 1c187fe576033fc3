"""The raylora command line: one YAML, ``key.path=value`` overrides, one command per stage.

    raylora demo-assets configs/demo.yaml        # sample data + the offline tiny model
    raylora curate configs/demo.yaml             # Ray Data curation -> curated/manifest.json
    raylora train configs/demo.yaml adapter.r=16 # Ray Train + DeepSpeed adapter training
    raylora register configs/demo.yaml           # MLflow registry: new version, gated alias champion
    raylora promote configs/demo.yaml 3 --reason "..."   # raylora rollback configs/demo.yaml
    raylora run configs/demo.yaml                # every stage in order
    raylora submit configs/demo.yaml --address http://HEAD:8265   # the same run as a job on a Ray cluster
    raylora jobs --address http://HEAD:8265 status|logs|stop JOB_ID   # a submitted job (no CONFIG)
    raylora generate configs/demo.yaml --prompt "What is 2 + 3?"   # answers of the champion (or --version, --from)
    raylora export configs/demo.yaml --merged out/merged             # merged model in safetensors (or --adapter OUT)
    raylora study --list                         # the studies of the field's LoRA findings, with their claims
    raylora study targets configs/demo.yaml      # one study: a Ray Tune grid, its table, plot and verdict

Exit codes: 0 ok, 1 a stage failed, 2 usage or config error, 130 interrupted (Ctrl-C; a second one stops at once).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipelines import cli_parser
from pipelines.artifacts import curated_manifest_path, read_curated_manifest
from pipelines.config import RayloraConfig, dump_config, load_config, parse_override
from pipelines.console import setup_console, stop_relaying
from pipelines.errors import ConfigError, Interrupted, StageError
from pipelines.interrupts import EXIT_INTERRUPTED, second_interrupt_exits
from pipelines.local_files import check_workdir

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

STAGE_SUMMARY = {
    "curate": "read the sources, filter, dedup, decontaminate, write train/eval Parquet and manifest.json",
    "tune": "search adapter rank / alpha / learning rate with Ray Tune (ASHA), one Ray Train run per trial",
    "train": "train the adapter on Ray Train with DeepSpeed ZeRO, eval, checkpoint, log to MLflow",
    "register": "register the adapter in MLflow and promote it by alias when it beats the champion",
}


def cmd_demo_assets(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    from pipelines.demo import build_demo_assets

    for name, path in build_demo_assets(cfg).items():
        print(f"{name:>11}  {path}")
    return EXIT_OK


def cmd_curate(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    from pipelines.curate import curate

    manifest = curate(cfg, reuse=not args.force)
    print(f"manifest: {curated_manifest_path(cfg)} "
          f"(train {manifest.num_train}, eval {manifest.num_eval}, dropped {manifest.num_dropped})")
    return EXIT_OK


def cmd_tune(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Search ``tune.search_space`` on the curated manifest; rerun after a crash to restore the search."""
    from pipelines.artifacts import tune_result_path
    from pipelines.tune import check_search, tune

    check_search(cfg)
    result = tune(cfg, read_curated_manifest(cfg, args.config))
    print(f"tune result  {tune_result_path(cfg).resolve()}")
    print(f"best trial   {result.best_trial['trial_id']} {result.best_trial['params']}")
    print(f"mlflow run   {result.mlflow_run_id} ({cfg.tracking_uri})")
    return EXIT_OK


def cmd_train(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Train on the curated manifest ``<workdir>/<curate.output_dir>/manifest.json``; rerun to resume."""
    from pipelines.console import flush_worker_lines
    from pipelines.train import train

    result = train(cfg, read_curated_manifest(cfg, args.config))
    flush_worker_lines()  # the last progress lines before the summary
    width = max(len(k) for k in result.metrics)
    for key, value in sorted(result.metrics.items()):
        print(f"  {key:<{width}}  {value:.6g}")
    print(f"adapter     {result.adapter_path}")
    print(f"checkpoint  {result.checkpoint_path}")
    print(f"mlflow run  {result.mlflow_run_id} ({cfg.tracking_uri})")
    return EXIT_OK


def cmd_register(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Register the adapter of the search (or of run_name's train run, or ``--from PATH``) and gate ``champion``.
    ``raylora run`` reaches it as the stage after train with no ``--from``."""
    from pipelines.register import register

    done = register(cfg, getattr(args, "source", None))
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(done.gate_metrics.items()))
    print(f"registered {done.model_name} version {done.version} from {done.source} ({metrics})")
    if done.promoted:
        print(f"{cfg.register.champion_alias}: version {done.version} ({done.reason})")
    else:
        print(f"{cfg.register.champion_alias} stays {f'version {done.champion_version}' if done.champion_version else 'unset'}"
              f": {done.reason}")
    print(f"aliases of version {done.version}: {', '.join(done.aliases)}  ({cfg.register.registry_uri or cfg.tracking_uri})")
    return EXIT_OK


def cmd_promote(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Point ``champion`` at VERSION (a number or an alias): gated unless --force, the reason recorded."""
    from pipelines.register import promote

    done = promote(cfg, args.version, args.reason, force=args.force)
    print(f"{cfg.register.champion_alias} of {done.model_name}: version {done.version} ({done.reason})")
    return EXIT_OK


def cmd_rollback(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Point ``champion`` back at the previous champion."""
    from pipelines.register import rollback

    done = rollback(cfg, args.reason)
    print(f"{cfg.register.champion_alias} of {done.model_name}: version {done.version} ({done.reason})")
    return EXIT_OK


def cmd_run(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Every stage in order: curate, then tune (when ``tune.enabled``; its best trial is the adapter) or one
    train run, then register; each stage whose output for these inputs exists is skipped with a line."""
    from pipelines.run import run_pipeline

    run_pipeline(cfg, skip_tune=args.skip_tune)
    return EXIT_OK


def cmd_submit(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """``raylora run`` on a Ray cluster as one job, its logs streamed here; exits with the job's outcome (0
    succeeded, 1 failed or stopped; 130 when Ctrl-C stops the following, not the job). An unreachable head or a
    missing token is exit 2, nothing submitted."""
    from cluster.jobs import connect, follow, relative_path_warning, submit

    head = connect(args.address)
    if note := relative_path_warning(cfg):
        print(note)
    job_id = submit(head.client, cfg, args.config, args.overrides)
    print(f"submitted job {job_id} to {head.address} (raylora jobs --address {head.address} status|logs|stop {job_id})")
    if args.no_wait:
        return EXIT_OK
    try:
        state = follow(head.client, job_id)
    except KeyboardInterrupt:
        print(f"\nraylora submit: interrupted; stopped following, the job goes on (raylora jobs --address "
              f"{head.address} stop {job_id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if state.status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return EXIT_OK
    print(f"job {job_id} {state.status}: {state.message}", file=sys.stderr)
    return EXIT_FAILURE


def cmd_jobs(cfg: None, args: argparse.Namespace) -> int:
    """A job ``raylora submit`` started (no CONFIG): its status, its logs so far, or stop it."""
    from cluster.jobs import connect, job_logs, job_status, stop_job

    head = connect(args.address)
    if args.action == "logs":
        print(job_logs(head.client, args.job_id), end="")
        return EXIT_OK
    state = (stop_job if args.action == "stop" else job_status)(head.client, args.job_id)
    print(f"{state.job_id}  {state.status}  run {state.run_name or '-'}" + (f"\n{state.message}" if state.message else ""))
    return EXIT_OK


def cmd_plan(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Print the memory plan as JSON; exit 1 when the configured ZeRO setting does not fit.

        raylora plan configs/llama-3.1-8b-qlora.yaml --gpu-memory-gib 24
        raylora plan configs/demo.yaml --model-config configs/models/llama-2-7b.json

    The model's config.json comes from --model-config, else model.base (a directory, or the hub and its
    cache), else model.config_file when the hub cannot give it (offline, or a gated model without a token).
    """
    import json

    from adapters.memory import load_hf_config, plan
    from pipelines.models import model_config_file

    source = args.model_config or model_config_file(cfg.model, "or pass --model-config")
    num_gpus = args.num_gpus if args.num_gpus is not None else cfg.cluster.num_workers
    result = plan(cfg.model, cfg.adapter, cfg.train, load_hf_config(source), num_gpus=num_gpus,
                  gpu_memory_gib=args.gpu_memory_gib)
    result["model"]["config_source"] = str(source)
    print(json.dumps(result, indent=2))
    return EXIT_OK if result["verdict"] == "fits" else EXIT_FAILURE


def cmd_bench(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Each stage's benchmark, measured side by side; ``all`` runs every one."""
    if args.what in ("curate", "all"):
        from pipelines.bench.curate import run_bench

        run_bench(cfg, sizes=args.sizes)
    if args.what in ("train", "all"):
        from pipelines.bench.train import bench_train

        print(bench_train(cfg, args.config))
    if args.what in ("tune", "all"):
        from pipelines.bench.tune import bench_tune

        print(bench_tune(cfg, args.config))
    return EXIT_OK


def cmd_show_config(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """The resolved YAML, or with ``--explain`` every key's value, default and description."""
    from pipelines.config import explain_config

    print(explain_config(cfg) if args.explain else dump_config(cfg), end="")
    return EXIT_OK


def cmd_generate(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Answer each prompt with the champion (or ``--version``, ``--alias``, ``--from PATH``) through its chat template."""
    from pipelines.use import AdapterChoice, generate, read_prompts

    prompts = args.prompt or read_prompts(args.prompts_file)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else cfg.register.max_new_tokens
    source, answers = generate(cfg, AdapterChoice(args.version, args.alias, args.source), prompts,
                               max_new_tokens=max_new_tokens, temperature=args.temperature)
    print(f"adapter  {source.description}")
    for prompt, answer in zip(prompts, answers, strict=True):
        print(f"\nprompt   {prompt}\nanswer   {answer}")
    return EXIT_OK


def cmd_export(cfg: RayloraConfig, args: argparse.Namespace) -> int:
    """Write the chosen adapter merged into its base (``--merged OUT``) or as PEFT files (``--adapter OUT``)."""
    from pipelines.use import AdapterChoice, export, export_summary

    report = export(cfg, AdapterChoice(args.version, args.alias, args.source), args.merged or args.adapter_out,
                    merged=args.merged is not None, force=args.force)
    print(export_summary(report))
    return EXIT_OK


def cmd_study(cfg: RayloraConfig | None, args: argparse.Namespace) -> int:
    """``--list``: every study and its claims (no CONFIG). Otherwise run study NAME (a name in configs/studies/
    or a YAML path) on CONFIG's model and data; the study file is checked before any Ray work."""
    from pipelines.study import describe_studies, load_study, run_study

    if args.list:
        print(describe_studies(), end="")
        return EXIT_OK
    study = load_study(args.name)
    overrides = {".".join(keys): value for keys, value in map(parse_override, args.overrides)}
    verdict = run_study(study, cfg, reduced=args.reduced, overrides=overrides)
    print(f"study {study.name}: {verdict['verdict']}  ({cfg.path('studies', study.name).resolve()})")
    return EXIT_OK


Handler = Callable[[RayloraConfig, argparse.Namespace], int]
COMMANDS_WITHOUT_CONFIG = ("jobs",)  # about a job already submitted, whatever its config was
COMMANDS: dict[str, tuple[Handler, str]] = {
    "curate": (cmd_curate, STAGE_SUMMARY["curate"]),
    "tune": (cmd_tune, STAGE_SUMMARY["tune"]),
    "train": (cmd_train, STAGE_SUMMARY["train"]),
    "register": (cmd_register, STAGE_SUMMARY["register"]),
    "promote": (cmd_promote, "point alias champion at a registered version (gated unless --force), with a reason"),
    "rollback": (cmd_rollback, "point alias champion back at the previous champion"),
    "generate": (cmd_generate, "answer prompts with the champion, a version or a run's adapter, through its chat template"),
    "export": (cmd_export, "write the adapter merged into its base (safetensors) or as PEFT files, with its tokenizer"),
    "run": (cmd_run, "all stages in order: curate, tune, train, register"),
    "submit": (cmd_submit, "submit this config as a Ray Job to a running cluster (Ray Jobs API)"),
    "jobs": (cmd_jobs, "status, logs or stop of a job raylora submit started (takes no CONFIG)"),
    "plan": (cmd_plan, "print the memory plan (params, bytes per GPU by ZeRO stage) as JSON"),
    "bench": (cmd_bench, "benchmarks: curate | train | tune | all, measured side by side"),
    "demo-assets": (cmd_demo_assets, "write the sample data and build the offline tiny base model"),
    "study": (cmd_study, "run one of the field's LoRA findings as a grid on your model and data; --list shows them"),
    "config": (cmd_show_config, "print the fully resolved config (defaults and overrides applied)"),
}


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser({name: help_text for name, (_, help_text) in COMMANDS.items()},
                                   COMMANDS_WITHOUT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may also follow the options (`plan CONFIG --num-gpus 4 adapter.r=16`): argparse leaves
    # those over, and subparsers rule out parse_intermixed_args
    args, leftover = parser.parse_known_args(argv)
    needs_config = args.command not in COMMANDS_WITHOUT_CONFIG and not getattr(args, "list", False)
    if needs_config and args.command == "study" and not (args.name and args.config):
        parser.error("study needs NAME and CONFIG (or --list)")
    stray = [item for item in leftover if item.startswith("-") or "=" not in item or not needs_config]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = [*args.overrides, *leftover]
    handler = COMMANDS[args.command][0]
    try:
        with second_interrupt_exits(args.command):
            if not needs_config:
                return handler(None, args)
            cfg = load_config(args.config, args.overrides)
            check_workdir(cfg)
            setup_console(cfg.path("logs", "libraries.log"))
            return handler(cfg, args)
    except ConfigError as err:
        print(f"raylora {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except StageError as err:
        print(f"raylora {args.command} failed: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except Interrupted as err:
        print(f"\nraylora {args.command}: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\nraylora {args.command}: interrupted; what it had finished is kept (nothing half-written replaces "
              "it): rerun the same command to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop_relaying()


if __name__ == "__main__":
    sys.exit(main())
