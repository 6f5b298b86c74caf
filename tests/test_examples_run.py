"""Every pre-training example in the README and in `robust-hub pretrain --help` is a valid run, and the
commands of the other subcommands parse; the smoke example runs (one step per epoch)."""

import re
import shlex
from pathlib import Path

import pytest

from robust_hub.cli import PRETRAIN_EXAMPLES, build_parser, main
from robust_hub.config import load_config

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("trainers/pretrain.py", "trainers/sat.py")


def commands(text):
    """Each robust-hub / trainer invocation in ``text``'s lines, as argument lists (comments and `&&` chains split)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():  # continuation lines joined
        line = re.sub(r"(^| )#.*", "", line).strip()
        for part in line.split("&&"):
            words = shlex.split(part)
            for start, word in enumerate(words):
                if word == "robust-hub" or word.endswith(TRAINERS):
                    found.append(words[start:])
                    break
    return found


def readme_text():
    return "\n".join(re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S))


def pretraining_runs():
    runs = []
    for words in commands(readme_text()) + commands(PRETRAIN_EXAMPLES):
        if words[0].endswith(TRAINERS) or words[1] == "pretrain":
            args = words[1:] if words[0].endswith(TRAINERS) else words[2:]
            runs.append(args)
    return runs


def config_of(args):
    config = args[args.index("--config") + 1]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    return config, overrides


def test_the_examples_are_found():
    runs = pretraining_runs()
    assert len(runs) >= 15 and any("data.subset=2000" in r for r in runs) and any("coreset.mode=rcs" in r for r in runs)
    assert len(commands(PRETRAIN_EXAMPLES)) == 3


@pytest.mark.parametrize("args", pretraining_runs(), ids=lambda a: " ".join(a)[:90])
def test_every_pretraining_example_is_a_valid_config(args):
    config, overrides = config_of(args)
    load_config(REPO / config, overrides)  # e.g. train.epochs at or below train.warmup_epochs would fail here


def test_every_eval_and_postprocess_command_parses():
    parser = build_parser()
    checked = 0
    for words in commands(readme_text()):
        if words[0] == "robust-hub" and words[1] in ("eval", "postprocess") and not any("[" in w for w in words):
            parser.parse_args(words[1:])
            checked += 1
    assert checked >= 6


def test_the_smoke_example_runs(tmp_path, monkeypatch, capsys):
    (args,) = [a for a in pretraining_runs() if "train.max_steps_per_epoch=3" in a and "configs/offline.yaml" in a][:1]
    monkeypatch.chdir(REPO)
    shortened = [a for a in args if not a.startswith(("train.output_dir=", "train.max_steps_per_epoch="))]
    assert main(["pretrain", *shortened, f"train.output_dir={tmp_path / 'smoke'}", "train.max_steps_per_epoch=1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"model written to {tmp_path / 'smoke' / 'model'}"
