"""The command line's arguments: one subcommand per entry of ``pipelines.cli.COMMANDS``, each taking CONFIG and
``key.path=value`` overrides, plus its own options (``raylora COMMAND --help`` lists them)."""

from __future__ import annotations

import argparse


def row_counts(text: str) -> tuple[int, ...]:
    """``--sizes``: comma-separated positive row counts."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive row counts separated by commas, e.g. 50000,200000; "
                                         f"got {text!r}")
    return sizes


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def add_adapter_choice(cmd: argparse.ArgumentParser) -> None:
    """generate / export: which adapter, by default the champion of register.model_name."""
    source = cmd.add_mutually_exclusive_group()
    source.add_argument("--version", type=positive_int, help="a registered version of register.model_name")
    source.add_argument("--alias", help="a registry alias; default register.champion_alias")
    source.add_argument("--from", dest="source", metavar="PATH",
                        help="a TrainResult or TuneResult JSON, or an adapter directory (on CONFIG's base)")


def build_parser(help_by_command: dict[str, str], without_config: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser of every command: ``help_by_command`` in the order shown; ``without_config`` take no CONFIG."""
    parser = argparse.ArgumentParser(
        prog="raylora",
        description="Fine-tune LLMs with LoRA / QLoRA / DoRA adapters on Ray.",
        epilog="Every command but jobs takes CONFIG (a YAML file) and any number of key.path=value overrides.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in help_by_command.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name in without_config:
            cmd.add_argument("--address", help="the head's Ray dashboard, e.g. http://HEAD:8265; default RAY_ADDRESS")
            cmd.add_argument("action", choices=["status", "logs", "stop"], help="what to do with the job")
            cmd.add_argument("job_id", metavar="JOB_ID", help="the id raylora submit printed")
            cmd.set_defaults(config=None, overrides=[])
            continue
        if name == "study":
            cmd.add_argument("--list", action="store_true", help="list the studies and their claims (no NAME, CONFIG)")
            cmd.add_argument("--reduced", action="store_true", help="the study's few-step version (what tests run)")
            cmd.add_argument("name", metavar="NAME", nargs="?", help="a study of configs/studies/, or a study YAML")
            cmd.add_argument("config", metavar="CONFIG", nargs="?", help="YAML config: the model and data")
            cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.max_steps=20")
            continue
        if name == "bench":
            cmd.add_argument("what", choices=["curate", "train", "tune", "all"], help="which benchmark to run")
            cmd.add_argument("--sizes", default="50000,200000,1000000", type=row_counts,
                             help="curate: rows of each throughput point, comma-separated (e.g. 50000 for a quick run)")
        cmd.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/demo.yaml")
        if name == "promote":
            cmd.add_argument("version", metavar="VERSION", help="the version to promote: a number or an alias")
        cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. adapter.r=16")
        if name == "curate":
            cmd.add_argument("--force", action="store_true",
                             help="curate again even when the output already holds the curation of these inputs")
        if name == "run":
            cmd.add_argument("--skip-tune", action="store_true", help="train once with the config as given, even when tune.enabled is true")
        if name == "plan":
            cmd.add_argument("--model-config", help="a Hugging Face config.json to plan for, no weights needed")
            cmd.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU")
            cmd.add_argument("--num-gpus", type=int, default=None, help="defaults to cluster.num_workers")
        if name == "register":
            cmd.add_argument("--from", dest="source", metavar="PATH",
                             help="a TrainResult or TuneResult JSON; default: the newest of run_name's")
        if name == "promote":
            cmd.add_argument("--reason", required=True, help="why, recorded on the version")
            cmd.add_argument("--force", action="store_true", help="promote even when the gate does not hold")
        if name == "rollback":
            cmd.add_argument("--reason", help="why, recorded on the versions")
        if name == "submit":
            cmd.add_argument("--address", help="the head's Ray dashboard, e.g. http://HEAD:8265; default RAY_ADDRESS")
            cmd.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
        if name in ("generate", "export"):
            add_adapter_choice(cmd)
        if name == "generate":
            prompts = cmd.add_mutually_exclusive_group(required=True)
            prompts.add_argument("--prompt", action="append", help="a prompt; repeat for more")
            prompts.add_argument("--prompts-file", metavar="FILE", help='JSONL, one {"prompt": "..."} per line')
            cmd.add_argument("--max-new-tokens", type=positive_int, default=None,
                             help="tokens generated per answer; default register.max_new_tokens (as served)")
            cmd.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily; > 0 samples")
        if name == "export":
            out = cmd.add_mutually_exclusive_group(required=True)
            out.add_argument("--merged", metavar="OUT", help="write the model with the adapter merged in (safetensors)")
            out.add_argument("--adapter", dest="adapter_out", metavar="OUT", help="write the PEFT adapter files")
            cmd.add_argument("--force", action="store_true", help="replace an earlier export in OUT")
        if name == "config":
            cmd.add_argument("--explain", action="store_true",
                             help="print every key with its value, default and description; * marks changed ones")
    return parser
