"""`robust-hub --help` and argument errors answer at once: nothing heavy is imported before parsing.

Each check runs in a fresh interpreter (this test process has long imported torch). Importing robust_hub stays
cheap, and robust-hub's architectures still reach timm's registry whichever of the two is imported first.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "transformers", "accelerate", "numpy", "huggingface_hub", "datasets", "sklearn")
COMMANDS = ("pretrain", "convert", "postprocess", "inspect", "push", "eval", "card", "submit", "leaderboard")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def _imported_after(argv: list[str], entry: str = "from robust_hub.cli import main") -> tuple[int, list[str], str]:
    code = (f"import sys, json\n{entry}\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
            f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)")
    done = _run(code)
    code, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    return code, heavy, done.stdout + done.stderr


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_imports_nothing_heavy(argv):
    code, heavy, output = _imported_after(argv)
    assert code == 0 and "usage:" in output
    assert heavy == [], f"`robust-hub {' '.join(argv)}` imported {heavy}"


@pytest.mark.parametrize("argv", [["frobnicate"], ["eval"], ["eval", "m", "--out", "o", "--batch-size", "many"],
                                  ["pretrain", "--resume", "a", "--bogus"]])
def test_argument_errors_import_nothing_heavy(argv):
    code, heavy, output = _imported_after(argv)
    assert code == 2 and "error:" in output
    assert heavy == []


def test_trainer_help_imports_nothing_heavy():
    code = ("import sys, runpy\nsys.argv = ['trainers/pretrain.py', '--help']\n"
            "try:\n    runpy.run_path('trainers/pretrain.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = _run(code)
    assert "usage:" in done.stdout and done.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("order", ["robust_hub first", "timm first", "transformers checks timm first"])
def test_architectures_reach_timm_whichever_is_imported_first(order):
    first = {"robust_hub first": "import robust_hub\nimport timm",
             "timm first": "import timm\nimport robust_hub",
             # transformers asks importlib.util.find_spec('timm') before it imports timm
             "transformers checks timm first": "import robust_hub, importlib.util\nimportlib.util.find_spec('timm')\n"
                                               "import timm"}[order]
    done = _run(f"{first}\nprint(timm.is_model('robust_resnet_tiny'), timm.create_model('robust_resnet_tiny').num_features)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "128"]


def test_loading_with_transformers_needs_import_robust_hub_and_every_place_users_look_says_so(tmp_path):
    import robust_hub

    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(str(tmp_path / "m"))
    load = f"from transformers import AutoModel\nAutoModel.from_pretrained({str(tmp_path / 'm')!r})\nprint('loaded')"
    without = _run(load)
    assert without.returncode != 0 and "upgrade timm" in without.stderr  # the misleading message users meet
    assert _run(f"import robust_hub\n{load}").stdout.strip() == "loaded"
    first_paragraph = (REPO / "README.md").read_text().split("\n\n")[1]
    assert "`import robust_hub` first" in first_paragraph and "upgrade timm" in first_paragraph
    for card in (REPO / "model_cards").glob("*.md"):
        snippet = card.read_text().split("```python\n", 1)[1]
        assert snippet.startswith("import robust_hub    # first, for timm and transformers too"), card.name
        assert "upgrading does not help, the import does" in card.read_text(), card.name


def test_push_logs_no_line_per_http_request(hub, tmp_path, caplog, monkeypatch):
    import logging

    import robust_hub
    from robust_hub.cli import QUIET_LOGGERS, main

    for name in QUIET_LOGGERS:  # main() sets these levels; put them back after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(str(tmp_path / "m"))
    caplog.set_level(logging.INFO)
    assert main(["push", str(tmp_path / "m"), "org/quiet"]) == 0
    http_lines = [r.getMessage() for r in caplog.records if r.name.startswith(("httpx", "httpcore", "urllib3"))]
    assert http_lines == [] and not any("HTTP Request" in r.getMessage() for r in caplog.records)
