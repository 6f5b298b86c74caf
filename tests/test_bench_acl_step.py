"""bench/bench_acl_step.py --profile-steps: the convolution split and the ceiling it implies are what they say."""

import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_acl_step  # noqa: E402


@pytest.mark.parametrize("name", ["aten::mkldnn_convolution", "aten::convolution_backward",
                                  "aten::_nnpack_spatial_convolution", "aten::_slow_conv2d_forward",
                                  "aten::cudnn_convolution"])
def test_convolution_kernels_count_as_convolution(name):
    assert bench_acl_step.is_convolution(name)


@pytest.mark.parametrize("name", ["aten::native_batch_norm", "aten::mm", "aten::threshold_backward",
                                  "autograd::engine::evaluate_function: ConvolutionBackward0", "ConvolutionBackward0"])
def test_other_ops_and_autograd_wrappers_do_not(name):
    assert not bench_acl_step.is_convolution(name)


def test_the_ceiling_is_the_reference_step_over_the_variants_convolution_time(one_torch_thread):
    args = SimpleNamespace(arch="robust_resnet_tiny", batch=4, pgd_steps=2, method="acl", ir=False, steps=1, warmup=0,
                           split_steps=0, rounds=1, keep_going=False, profile_steps=1, variants="reference,plain")
    report = bench_acl_step.run(args, torch.device("cpu"), lambda precision: 1.0)
    rows = {row["variant"]: row for row in report["results"]}
    for row in rows.values():
        profile = row["profile"]
        assert 0 < profile["convolution_s"] < profile["step_s"]
        assert profile["other_s"] == pytest.approx(profile["step_s"] - profile["convolution_s"])
        assert profile["convolution_share"] == pytest.approx(profile["convolution_s"] / profile["step_s"], abs=1e-4)
        expected = rows["reference"]["profile"]["step_s"] / profile["convolution_s"]
        assert row["ceiling_vs_reference"] == pytest.approx(expected, abs=1e-3)
    # Without profiling there is no split and no ceiling.
    report = bench_acl_step.run(SimpleNamespace(**{**vars(args), "profile_steps": 0}), torch.device("cpu"),
                                lambda precision: 1.0)
    assert all("profile" not in row and "ceiling_vs_reference" not in row for row in report["results"])


@pytest.mark.parametrize("argv, message", [
    (["--profile-steps", "-1"], "error: --profile-steps must be at least 0, got -1"),
    (["--steps", "0"], "error: --steps must be at least 1, got 0"),
    (["--device", "cuda", "--profile-steps", "1"], "error: --profile-steps splits CPU time"),
])
def test_bad_counts_and_a_gpu_profile_are_one_error_line_before_any_work(argv, message, tmp_path):
    import subprocess

    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_acl_step.py"), *argv, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_out_replaces_only_an_earlier_report_of_this_bench(tmp_path):
    import json

    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "old.json").write_text(json.dumps({"bench": "acl_step", "results": []}))
    (tmp_path / "link.json").symlink_to(tmp_path / "old.json")
    assert not bench_acl_step.replaceable_report(str(mine))
    assert not bench_acl_step.replaceable_report(str(tmp_path / "text.json"))
    assert not bench_acl_step.replaceable_report(str(tmp_path / "link.json"))
    assert bench_acl_step.replaceable_report(str(tmp_path / "old.json"))
    assert bench_acl_step.replaceable_report(str(tmp_path / "new.json"))
    import subprocess

    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_acl_step.py"), "--out", str(mine)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: --out {mine} exists and is not a report of this bench; it is left as it is")
    assert mine.read_text() == '{"my": "notes"}'
