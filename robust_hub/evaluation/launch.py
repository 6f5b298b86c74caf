""":func:`evaluate` over several processes from inside a program (``leaderboard run --num-processes N``): the
evaluation runs as a child under ``accelerate launch``, so it shares its work exactly as a user's
``accelerate launch eval_suite/evaluate.py`` does, while the calling program carries on (a runner renews its lease).

    python -m robust_hub.evaluation.launch SPEC.json RECORDS.json   (what the child runs on each process)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from robust_hub.errors import RobustHubError


def free_port() -> int:
    """A TCP port free now on this host, for the process group's rendezvous (two launches never share one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(num_processes: int) -> list[str]:
    """``accelerate launch`` over ``num_processes`` processes on this machine (GPUs, or gloo on the CPU)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no"]


def evaluate_launched(model: str, num_processes: int, **kwargs) -> list[dict]:
    """``evaluate(model, **kwargs)`` over ``num_processes`` processes; its records. The child's one-line error
    comes back as a RobustHubError; any other failure of the child as a RuntimeError."""
    if not isinstance(num_processes, int) or isinstance(num_processes, bool) or num_processes < 1:
        raise RobustHubError(f"the number of processes must be a positive integer, got {num_processes!r}")
    try:
        spec = json.dumps({"model": str(model), "kwargs": {**kwargs, "out_dir": str(kwargs["out_dir"])}})
    except TypeError as exc:
        raise RobustHubError("an evaluation over several processes needs its settings as plain values (e.g. a "
                             f"dataset by name, not in memory): {exc}") from None
    with tempfile.TemporaryDirectory(prefix="robust-hub-launch-") as tmp:
        spec_path, records_path = Path(tmp) / "spec.json", Path(tmp) / "records.json"
        spec_path.write_text(spec)
        done = subprocess.run([*accelerate_command(num_processes), "-m", __name__, str(spec_path), str(records_path)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        errors = [line[len("error: "):] for line in done.stderr.splitlines() if line.startswith("error: ")]
        if done.returncode == 2 and errors:
            raise RobustHubError(errors[-1])
        if done.returncode != 0 or not records_path.is_file():
            raise RuntimeError(f"the evaluation processes exited with status {done.returncode}: "
                               f"{done.stderr.strip()[-2000:]}")
        return json.loads(records_path.read_text())


def _run_child(args: argparse.Namespace) -> int:
    from robust_hub.evaluation import sharding
    from robust_hub.evaluation.runner import evaluate

    spec = json.loads(Path(args.spec).read_text())
    records = evaluate(spec["model"], **spec["kwargs"])
    if sharding.is_main_process():
        Path(args.records).write_text(json.dumps(records))
    return 0


def main(argv: list[str] | None = None) -> int:
    from robust_hub.cli import run_with_errors

    parser = argparse.ArgumentParser(prog="python -m robust_hub.evaluation.launch")
    parser.add_argument("spec")
    parser.add_argument("records")
    return run_with_errors(_run_child, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
