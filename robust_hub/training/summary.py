"""What a finished training run prints: where its outputs are, whether it worked (the probe) and what to run next."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from robust_hub.config import RunConfig
from robust_hub.errors import RobustHubError


def print_summary(config: RunConfig, model_dir: Path, *, pretrained: bool) -> None:
    """Where the model is; for a pre-trained backbone also the probe (``train.probe``), the run files and next steps."""
    print(f"model written to {model_dir}", flush=True)
    if not pretrained:
        return
    if config.train.probe:
        print(flush=True)
        print("\n".join(_probe_lines(config, model_dir)), flush=True)
    out = Path(config.train.output_dir)
    tool = _command("robust-hub")
    results = out / "results"
    print(f"\nmodel card: {model_dir / 'README.md'}; run files: {out}/ (run_config.yaml, environment.json, "
          f"checkpoints/); training curves: tensorboard --logdir {out / 'logs'}")
    print("next:")
    print(f"  {tool} inspect {model_dir}")
    print(f"  {tool} eval {model_dir} --protocols slf --metrics clean,pgd20 --dataset {config.data.source} "
          f"--out {results}")
    print(f"  {tool} card {model_dir} --results {results}")
    print(f"  {_command('python')} -c \"import robust_hub; print(robust_hub.from_pretrained('{model_dir}'))\"")


def _probe_lines(config: RunConfig, model_dir: Path) -> list[str]:
    from robust_hub.training.probe import probe_pretraining

    try:
        report = probe_pretraining(model_dir, config)
    except RobustHubError as error:
        return [f"no closing probe: {error}"]
    from robust_hub.training.probe import EPSILONS

    random_row, pretrained_row = report.rows.values()
    change = [100 * (mine - base) for mine, base in zip(pretrained_row, random_row)]
    under_attack = ", ".join(f"{c:+.1f} at {eps * 255:g}/255" for c, eps in zip(change[1:], EPSILONS))
    verdict = f"Pre-training changed the probe's accuracy by {change[0]:+.1f} points clean, {under_attack} under PGD-20."
    return [*report.lines(), verdict]


def _command(name: str) -> str:
    """``name`` as the user can run it: the interpreter's own bin/ when that is not on PATH (a fresh venv)."""
    executable = Path(sys.executable).with_name(name)
    on_path = os.environ.get("PATH", "").split(os.pathsep)
    if not executable.is_file() or str(executable.parent) in on_path:
        return name
    relative = os.path.relpath(executable.absolute())
    return shlex.quote(relative if not relative.startswith("..") else str(executable.absolute()))
