"""The README's commands are the ones CI and users run: they must not drift."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line for block in blocks[:2] for line in block.strip().splitlines()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    main_job, tests = readme_commands()
    assert main_job.startswith("python3 -m venv .venv && ") and "trainers/pretrain.py" in main_job
    assert tests.startswith("python3 -m venv .venv && ") and "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


def test_main_job_config_is_the_offline_default():
    main_job, _ = readme_commands()
    config = re.search(r"--config (\S+)", main_job).group(1)
    settings = yaml.safe_load((REPO / config).read_text())
    assert settings["data"]["source"].startswith("embedded:")
