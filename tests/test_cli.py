import subprocess
import sys
from pathlib import Path


def test_console_script_lists_its_commands():
    script = Path(sys.executable).with_name("robust-hub")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("pretrain", "eval", "convert", "inspect", "push"):
        assert command in result.stdout


def test_unknown_model_is_one_error_line(tmp_path, capsys):
    from robust_hub.cli import main

    assert main(["inspect", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
