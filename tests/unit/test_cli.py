import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS, EXIT_USAGE, build_parser, main

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
EXPECTED = {"curate", "train", "tune", "register", "run", "submit", "plan", "bench", "demo-assets"}


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    for name in EXPECTED:
        assert name in out
    assert EXPECTED <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert "CONFIG" in capsys.readouterr().out


def test_unknown_key_exits_2_naming_it(capsys):
    assert main(["curate", DEMO, "curate.bogus=1"]) == EXIT_USAGE
    assert "curate.bogus" in capsys.readouterr().err


def test_missing_config_exits_2(capsys):
    assert main(["train", "does-not-exist.yaml"]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_config_command_prints_resolved_config(capsys):
    assert main(["config", DEMO, "adapter.r=32"]) == 0
    assert "r: 32" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([str(Path(sys.executable).parent / "raylora"), "curate", DEMO, "curate.bogus=1"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert "curate.bogus" in out.stderr


def test_overrides_may_follow_options(capsys):
    assert main(["run", DEMO, "--skip-tune", "curate.bogus=1"]) == EXIT_USAGE
    assert "curate.bogus" in capsys.readouterr().err


def test_stray_option_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["train", DEMO, "--no-such-flag"])
    assert exit_info.value.code == 2
