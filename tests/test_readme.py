"""The README's commands are the ones CI and users run: they must not drift."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line for block in blocks[:2] for line in block.strip().splitlines()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    main_job, tests = readme_commands()
    assert main_job.startswith("python3 -m venv .venv && ") and "trainers/pretrain.py" in main_job
    assert tests.startswith("python3 -m venv .venv && ") and "pytest" in tests
    ci_lines = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == tests  # exactly the README's command, and nothing after it
    # CI may only prepare the machine before it: install chromium, and make the page test's skip a failure
    assert "export ROBUST_HUB_REQUIRE_BROWSER=1" in ci_lines[:-1] and not any("pytest" in l for l in ci_lines[:-1])


def test_main_job_config_is_the_offline_default():
    main_job, _ = readme_commands()
    config = re.search(r"--config (\S+)", main_job).group(1)
    settings = yaml.safe_load((REPO / config).read_text())
    assert settings["data"]["source"].startswith("embedded:")


def test_every_config_the_readme_names_exists_and_loads():
    from robust_hub.config import load_config

    text = (REPO / "README.md").read_text()
    names = set(re.findall(r"configs/([a-z0-9_]+\.yaml)", text)) | set(re.findall(r"\| `([a-z0-9_]+\.yaml)`", text))
    names |= set(re.findall(r"\| `([a-z0-9_]+_(?:cifar10|cifar100|stl10)\.yaml)`", text))
    assert {"dynacl_ir_cifar10.yaml", "acl_ir_stl10.yaml", "dynacl_cifar100.yaml"} <= names
    for name in names:
        load_config(REPO / "configs" / name)


@pytest.mark.timeout(1200)  # the launcher, a short run and the probe in a fresh process; 10 min on a loaded 2-core CPU
def test_main_job_as_written_prints_its_probe_and_next_steps_once_and_no_library_noise(tmp_path):
    """The README's launch, flags as written (only shortened by overrides): what a new user sees at the end."""
    main_job, _ = readme_commands()
    launch = main_job.split(" && ")[-1].replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    out = tmp_path / "offline"
    # 2 epochs with 1 of warm-up: a one-epoch cosine, which timm calls ineffective; the final checkpoint is staged
    shorter = (f" data.image_size=16 train.batch_size=32 attack.steps=1 train.max_steps_per_epoch=2 train.epochs=2"
               f" train.warmup_epochs=1 train.output_dir={out}")
    result = subprocess.run(["bash", "-c", launch + shorter], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    noise = result.stdout + result.stderr
    assert "were not passed to `accelerate launch`" not in noise  # Accelerate's defaults warning
    assert "Cosine annealing" not in noise  # timm's warning, false when stepped by epoch progress
    assert ".tmp" not in noise  # checkpoints are staged under .step_N.tmp: no log line names that
    lines = result.stdout.splitlines()
    assert lines[0] == f"model written to {out / 'model'}" and result.stdout.count("model written to") == 1
    probe = next(i for i, line in enumerate(lines) if line.startswith("Linear probe"))
    assert "fitted on the 1438 training images of embedded:digits" in lines[probe]
    assert "scored on its 359 held-out test images" in lines[probe]
    rows = [lines[probe + 2].split(), lines[probe + 3].split()]
    assert rows[0][:2] == ["random", "initialisation"] and rows[1][:2] == ["pre-trained", "(ACL)"]
    assert all(cell.endswith("%") for row in rows for cell in row[2:]) and len(rows[0]) == len(rows[1]) == 5
    assert lines[probe + 4].startswith("Pre-training changed the probe's accuracy by")
    assert f"inspect {out / 'model'}" in result.stdout and "next:" in lines
