"""bench/gpu_proof.py --tiny: the GPU proof's code runs end to end on a CPU, so it cannot rot between leases."""

import json
import sys

import pytest
from accelerate.state import AcceleratorState

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_proof  # noqa: E402


@pytest.mark.slow
def test_the_tiny_proof_runs_every_section_and_reports_them_in_order(tmp_path, one_torch_thread, capsys):
    out = tmp_path / "proof"
    AcceleratorState._reset_state(True)
    try:
        assert gpu_proof.main(["--tiny", "--out", str(out), "--work", str(tmp_path / "work"),
                               "--cache-dir", str(tmp_path / "cache")]) == 0
    finally:
        AcceleratorState._reset_state(True)
    report = json.loads((out / "report.json").read_text())
    sections = report["sections"]
    assert list(sections) == [name for name, _, _ in gpu_proof.SECTIONS]
    failed = {name: entry.get("error") for name, entry in sections.items() if entry["status"] != "ok"}
    assert not failed
    correctness = sections["correctness"]["result"]
    assert correctness["acl"]["ok"] and correctness["dynacl_ir"]["ok"]
    assert set(correctness["dynacl_ir"]["parts_rel_diff"]) == {"nat", "adv", "sir", "air"}
    step = sections["acl_step"]["result"]["acl"]
    rows = {row["variant"]: row for row in step["results"]}
    assert set(rows) == set(gpu_proof.TINY_VARIANTS.split(","))
    assert rows["reference"]["speedup_vs_reference"] == 1.0
    run = sections["real_run"]["result"]
    assert run["epochs"] == 1 and set(run["scores"]) == {"pretrained", "random_init"}
    assert all(0 <= s["clean_acc"] <= 1 for s in run["scores"].values())
    # The recipe comes from the measured throughput: hours = epochs x images / (images/s).
    recipe = sections["recipe"]["result"]
    assert recipe["full_recipe_hours"] == pytest.approx(1000 * 49152 / recipe["images_per_s"] / 3600, rel=1e-3)
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith((out / "report.md").read_text().rstrip())  # the Markdown prints last
    for name, _, _ in gpu_proof.SECTIONS:
        assert f"| {name} | ok |" in printed


def test_out_holding_other_files_is_refused(tmp_path):
    out = tmp_path / "proof"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="error: --out .* holds files this command did not write"):
        gpu_proof.main(["--tiny", "--out", str(out)])
    assert (out / "notes.txt").read_text() == "mine"
