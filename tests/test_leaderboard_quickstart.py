"""The README's offline leaderboard quickstart, run as written (each command through bash), with no network."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import robust_hub

from helpers import with_distinct_bn_statistics

REPO = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### A private leaderboard, offline", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_quickstart_runs_offline_and_makes_the_page(tmp_path):
    commands = quickstart_commands()
    assert [c.split()[:3] for c in commands] == [["robust-hub", "submit", "outputs/offline/model"],
                                                  ["robust-hub", "leaderboard", "run"],
                                                  ["robust-hub", "leaderboard", "build"]]
    # what the main job leaves behind: a tiny dual-BN ResNet at outputs/offline/model
    torch.manual_seed(0)
    with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny"), 0) \
        .save_pretrained(tmp_path / "outputs" / "offline" / "model")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ROBUST_HUB_", "XDG_"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9",  # nothing listens there
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)

    said = outputs[1]
    assert said.count("leaderboard run:") == 1 and "protocols slf (1 epoch(s))" in said
    assert f"signing key {home / '.config' / 'robust-hub' / 'leaderboard.key'} (created now" in said
    assert "FINISHED lab--acl-digits--local-sha256-" in said

    (result,) = (tmp_path / "board" / "results").rglob("*.json")
    record = json.loads(result.read_text())["record"]
    assert record["model"]["id"] == "lab/acl-digits" and record["model"]["revision"].startswith("local-sha256:")
    assert record["dataset"]["n_train"] == 256 and record["dataset"]["n_test"] == 64
    metrics = record["metrics"]
    html = (tmp_path / "site" / "index.html").read_text()
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert 'data-model="lab/acl-digits"' in html and "256 finetuning images, 64 test images" in html
    row = next(line for line in md.splitlines() if "lab/acl-digits" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    expected = [f"{100 * metrics[k]:.2f}" if metrics[k] is not None else "" for k in ("clean_acc", "pgd20_acc",
                                                                                      "autoattack_acc")]
    assert cells[1] == "lab/acl-digits (local)" and cells[2].startswith("sha256 "), cells
    assert cells[3:6] == expected
    distrusted = [f for f in record["flags"] if f not in ("autoattack_subset", "generated_corruptions")]
    assert cells[0] == "1" if not distrusted else cells[0].startswith("unranked")
