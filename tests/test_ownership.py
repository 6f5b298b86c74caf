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


KILLED_WRITER = """
import os, sys
from robust_hub import io

target, when = sys.argv[1], sys.argv[2]
replace = os.replace

def replace_then_die(src, dst):
    replace(src, dst)
    if when == "swap" and os.path.basename(dst) == "old":
        os._exit(9)  # killed between the two renames of a swap

os.replace = replace_then_die
with io.atomic_directory(target, "model") as staging:
    (staging / "config.json").write_text("{}")
    if when == "write":
        os._exit(9)  # killed while writing
"""


def kill_a_writer(target, when):
    """Leave exactly what a writer of ``target`` killed at ``when`` leaves (its pid is then dead)."""
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), when], capture_output=True, timeout=300)
    assert result.returncode == 9, result.stderr


def look_alike_user_folders(parent, target_name):
    """Folders a user made whose names match robust-hub's staging pattern for ``target_name``."""
    folders = {f".{target_name}.tmp-mynotes": "notes", f".{target_name}.tmp-999999999-x": "dead-looking pid",
               f".{target_name}.old-x/old": "looks like an interrupted swap"}
    for name, text in folders.items():
        (parent / name).mkdir(parents=True)
        (parent / name / "keep.txt").write_text(text)
    return {f"{name}/keep.txt": text for name, text in folders.items()}


def test_staging_left_by_a_kill_is_cleaned_and_a_users_look_alike_folders_survive(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    kill_a_writer(tmp_path / "m", "write")
    (ours,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]
    users = look_alike_user_folders(tmp_path, "m")
    (tmp_path / ".other.tmp-keep").mkdir()  # another target's name
    tiny.save_pretrained(tmp_path / "m")
    assert not (tmp_path / ours).exists()  # the killed writer's staging is gone
    assert_intact(tmp_path, users)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".other.tmp-keep", "m", ".m.tmp-mynotes", ".m.tmp-999999999-x", ".m.old-x"])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([MARKER, "config.json", "model.safetensors",
                                                                          "preprocessor_config.json"])


def test_a_half_swapped_model_is_restored_and_a_users_old_folder_is_never_moved_in(tiny, tmp_path):
    from robust_hub.io import clean_stale_staging

    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "notes.md").write_text("my notes")
    kill_a_writer(tmp_path / "m", "swap")
    assert not (tmp_path / "m").exists()
    clean_stale_staging(tmp_path / "m")
    assert (tmp_path / "m" / "notes.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    users = look_alike_user_folders(tmp_path, "n")  # no n/ exists: an interrupted swap would be restored as n/
    clean_stale_staging(tmp_path / "n")
    assert not (tmp_path / "n").exists()
    assert_intact(tmp_path, users)


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


def convert(*args, cwd):
    return subprocess.run([sys.executable, "-m", "robust_hub.cli", "convert", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_convert_leaves_a_users_staging_look_alikes_in_the_output_parent_alone(tmp_path):
    write_reference_checkpoint(tmp_path / "ref.pt")
    (tmp_path / "out").mkdir()
    users = look_alike_user_folders(tmp_path / "out", "model")
    result = convert(tmp_path / "ref.pt", "out/model", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_intact(tmp_path / "out", users)
    assert "old" not in {p.name for p in (tmp_path / "out" / "model").iterdir()}  # .model.old-x was not moved in
    assert read_marker(tmp_path / "out" / "model")["kind"] == "model"


def test_convert_overwrite_checks_every_name_before_moving_anything(tmp_path):
    write_reference_checkpoint(tmp_path / "ref.pt")
    mine = tmp_path / "mine"
    files = user_files(mine)
    (mine / "preprocessor_config.json").mkdir()  # a name robust-hub writes, taken by a directory
    before = sorted(p.name for p in mine.iterdir())
    result = convert(tmp_path / "ref.pt", "mine", "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert "preprocessor_config.json is a directory" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == before  # no config.json, weights or marker moved in
    assert_intact(mine, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ref.pt"]  # no staging left


def eval_out(tmp_path, name="results", eps=8 / 255, overwrite=False):
    """A real `robust-hub eval --out` (tiny backbone, clean accuracy only)."""
    from test_eval_helpers import TinyBackbone, synthetic_split

    from robust_hub.evaluation import evaluate

    out = tmp_path / name
    evaluate(TinyBackbone(), protocols="slf", dataset=(synthetic_split(32, "train", 0), synthetic_split(8, "test", 1)),
             out_dir=out, metrics="clean", progress=False, print_table=False, device="cpu", eps=eps,
             protocol_overrides={"epochs": 1, "batch_size": 16, "augment": False}, overwrite=overwrite)
    return out


def test_one_kind_of_artefact_never_replaces_another(tiny, tmp_path):
    from test_eval_helpers import TinyBackbone, synthetic_split

    from robust_hub.evaluation import evaluate

    results = eval_out(tmp_path)
    before = {p.name: p.read_bytes() for p in results.glob("*.json")}
    with pytest.raises(RobustHubError, match="is a robust-hub eval-results directory"):
        tiny.save_pretrained(results)  # a model over an eval --out
    write_reference_checkpoint(tmp_path / "ref.pt")
    result = convert(tmp_path / "ref.pt", results, cwd=tmp_path)
    assert result.returncode == 2 and "is a robust-hub eval-results directory" in result.stderr
    assert {p.name: p.read_bytes() for p in results.glob("*.json")} == before
    assert read_marker(results)["kind"] == "eval-results"

    tiny.save_pretrained(tmp_path / "m")
    with pytest.raises(RobustHubError, match="is a robust-hub model directory"):  # an eval --out over a model
        evaluate(TinyBackbone(), protocols="slf", dataset=(synthetic_split(32, "train", 0), synthetic_split(8, "test", 1)),
                 out_dir=tmp_path / "m", metrics="clean", progress=False, print_table=False, device="cpu")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [MARKER, "config.json", "model.safetensors", "preprocessor_config.json"])


def test_eval_never_writes_through_a_state_link_left_in_its_out(tmp_path):
    results = eval_out(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(results / "state", elsewhere / "state-was-here")
    os.symlink(elsewhere, results / "state")
    records = sorted(p.name for p in results.glob("*.json"))
    with pytest.raises(RobustHubError, match="state is a symbolic link"):
        eval_out(tmp_path, eps=4 / 255)  # another eps: a new record and new state to write
    assert sorted(p.name for p in elsewhere.iterdir()) == ["state-was-here"]
    assert sorted(p.name for p in results.glob("*.json")) == records

    foreign = tmp_path / "foreign"  # not robust-hub's, written into with --overwrite: the same rule
    user_files(foreign)
    os.symlink(elsewhere, foreign / "state")
    with pytest.raises(RobustHubError, match="state is a symbolic link"):
        eval_out(tmp_path, "foreign", overwrite=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["state-was-here"]
    assert sorted(p.name for p in foreign.iterdir()) == ["data", "state", "thesis.tex"]
