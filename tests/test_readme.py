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
