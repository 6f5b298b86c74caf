"""Nothing robust-hub did not write is lost: the ownership rule, umask, staging left by kills."""

import os
import stat
import subprocess
import sys

import pytest
import torch

import robust_hub
from robust_hub import RobustHubError
from robust_hub.io import MARKER, atomic_directory, read_marker

from helpers import with_distinct_bn_statistics


@pytest.fixture
def tiny():
    return with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny"))


def user_files(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "thesis.tex").write_text("years of work\n")
    (directory / "data").mkdir()
    (directory / "data" / "x.csv").write_text("1,2\n")
    return {"thesis.tex": "years of work\n", "data/x.csv": "1,2\n"}


def assert_intact(directory, files):
    for name, text in files.items():
        assert (directory / name).read_text() == text


def test_save_pretrained_refuses_a_directory_of_user_files(tiny, tmp_path):
    files = user_files(tmp_path / "mine")
    with pytest.raises(RobustHubError, match="not written by robust-hub.*--overwrite"):
        tiny.save_pretrained(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["data", "thesis.tex"]
    assert_intact(tmp_path / "mine", files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left


def test_overwrite_replaces_only_robust_hubs_own_names(tiny, tmp_path):
    files = user_files(tmp_path / "mine")
    (tmp_path / "mine" / "config.json").write_text("{}")  # a name robust-hub writes: replaced with --overwrite
    tiny.save_pretrained(tmp_path / "mine", overwrite=True)
    assert_intact(tmp_path / "mine", files)
    assert robust_hub.from_pretrained(str(tmp_path / "mine")).dual_bn
    assert read_marker(tmp_path / "mine")["kind"] == "model"


def test_a_file_or_a_path_under_a_file_is_refused(tiny, tmp_path):
    (tmp_path / "f").write_text("keep me")
    for target in (tmp_path / "f", tmp_path / "f" / "m"):
        with pytest.raises(RobustHubError, match="is a file|lies under the file"):
            tiny.save_pretrained(target, overwrite=True)
    assert (tmp_path / "f").read_text() == "keep me"


def test_replacing_an_earlier_model_keeps_files_a_user_added(tiny, tmp_path):
    other = with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny", dual_bn=False))
    other.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "notes.md").write_text("my notes")
    tiny.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "notes.md").read_text() == "my notes"
    assert robust_hub.from_pretrained(str(tmp_path / "m")).dual_bn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_the_old_model_stays_until_the_new_one_is_complete(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_directory(tmp_path / "m", "model") as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_files_follow_the_umask(tiny, tmp_path):
    old = os.umask(0o027)
    try:
        tiny.save_pretrained(tmp_path / "m", model_card="# card\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o750
    for name in ("config.json", "model.safetensors", "README.md", MARKER):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o640, name


def test_staging_left_by_a_kill_is_cleaned_and_a_half_swap_restored(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / ".m.tmp-abc123").mkdir()  # an older writer's staging
    (tmp_path / ".m.tmp-999999999-x").mkdir()  # a dead writer's staging
    (tmp_path / ".other.tmp-keep").mkdir()  # not ours to touch: another target's name
    tiny.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep", "m"]


def test_a_half_swapped_model_is_restored_before_anything_is_checked(tiny, tmp_path):
    from robust_hub.io import clean_stale_staging

    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "notes.md").write_text("my notes")
    os.makedirs(tmp_path / ".m.old-999999999-y")
    os.replace(tmp_path / "m", tmp_path / ".m.old-999999999-y" / "old")
    clean_stale_staging(tmp_path / "m")
    assert (tmp_path / "m" / "notes.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def write_reference_checkpoint(path):
    from test_convert import reference_model

    torch.save({"state_dict": reference_model(blocks=(1, 1, 1, 1)).state_dict()}, path)


def test_convert_into_the_working_directory_of_user_files_is_refused(tmp_path):
    write_reference_checkpoint(tmp_path / "ref.pt")
    work = tmp_path / "work"
    files = user_files(work)
    result = subprocess.run([sys.executable, "-m", "robust_hub.cli", "convert", str(tmp_path / "ref.pt"), "."],
                            cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in work.iterdir()) == ["data", "thesis.tex"]
    assert_intact(work, files)
    (work / "out").write_text("a file at the output path")
    result = subprocess.run([sys.executable, "-m", "robust_hub.cli", "convert", str(tmp_path / "ref.pt"), "out",
                             "--overwrite"], cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is a file" in result.stderr and result.stderr.count("\n") == 1
    assert (work / "out").read_text() == "a file at the output path"
