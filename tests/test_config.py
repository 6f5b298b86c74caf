import pytest

from robust_hub import RobustHubError
from robust_hub.config import load_config

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_paper_config_has_the_papers_defaults():
    config = load_config(REPO_CONFIGS / "acl_cifar10.yaml")
    assert config.attack.eps == pytest.approx(8 / 255) and config.attack.alpha == pytest.approx(2 / 255)
    assert config.attack.steps == 5 and config.method.temperature == 0.5
    assert (config.train.lr, config.train.batch_size, config.train.epochs) == (5.0, 512, 1000)
    assert (config.train.momentum, config.train.weight_decay, config.train.trust_coefficient) == (0.9, 1e-6, 1e-3)
    assert config.train.warmup_epochs == 10 and config.train.seed == 1


def test_overrides_apply_and_are_typed(tmp_path):
    config = load_config(REPO_CONFIGS / "offline.yaml", ["train.epochs=3", "attack.eps=4/255", "model.options={a: 1}"])
    assert config.train.epochs == 3 and config.attack.eps == pytest.approx(4 / 255)
    assert config.model.options == {"a": 1}
    assert "epochs: 3" in config.to_yaml()


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown key"),
    ("training.epochs=3", "unknown config section"),
    ("train.epochs=ten", "should be of type int"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("attack.eps=2", "attack.eps must be in"),
    ("method.name=simclr", "method.name must be one of"),
    ("method.strength=1.5", "method.strength"),
    ("train.mixed_precision=fp8", "mixed_precision"),
    ("train.batch_size=1", "batch_size"),
    ("train.lr=-1", "train.lr"),
    ("epochs=3", "section.key=value"),
])
def test_bad_values_are_rejected_with_the_key_named(override, message):
    with pytest.raises(RobustHubError, match=message):
        load_config(REPO_CONFIGS / "offline.yaml", [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RobustHubError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(RobustHubError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RobustHubError, match="mapping"):
        load_config(tmp_path / "list.yaml")


PUBLISHED = {f"{m}_{d}.yaml": (m, d) for m in ("acl", "acl_ir", "dynacl", "dynacl_ir") for d in ("cifar10", "cifar100", "stl10")}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_hold_the_papers_settings(name):
    method, dataset = PUBLISHED[name]
    config = load_config(REPO_CONFIGS / name)
    me, t, a = config.method, config.train, config.attack
    assert me.name == method.removesuffix("_ir") and me.ir == method.endswith("_ir")
    assert config.data.source == {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "stl10": "tanganke/stl10"}[dataset]
    assert (config.model.arch, config.data.image_size) == (("robust_resnet18_stl", 96) if dataset == "stl10" else ("robust_resnet18", 32))
    assert (t.lr, t.batch_size, t.epochs, t.warmup_epochs, t.lr_min, t.lars_convention) == (5.0, 512, 1000, 10, 1e-6, "reference")
    assert (t.momentum, t.weight_decay, t.trust_coefficient, t.seed) == (0.9, 1e-6, 1e-3, 1)
    assert (a.eps, a.alpha, a.steps) == (pytest.approx(8 / 255), pytest.approx(2 / 255), 5) and me.temperature == 0.5
    assert (me.strength, me.adv_weight, me.schedule_period) == (1.0, 0.0, 50)
    assert (me.sir_weight, me.air_weight, me.ir_divergence) == (0.5, 0.5, "reference")
    assert t.output_dir == f"outputs/{name.removesuffix('.yaml')}"


def test_scientific_notation_in_overrides_is_a_float():
    assert load_config(REPO_CONFIGS / "offline.yaml", ["train.weight_decay=1e-6"]).train.weight_decay == 1e-6


@pytest.mark.parametrize("override,message", [
    ("train.lr=inf", "finite"), ("train.lr=.inf", "finite"), ("train.lr=nan", "finite"), ("attack.eps=1e999", "finite"),
    ("attack.eps=8/0", "divides by zero"), ("data.val_fraction=0", "data.val_fraction"),
    ("data.val_fraction=0.5", "data.val_fraction"),
])
def test_non_finite_values_and_zero_denominators_are_refused_at_validation(override, message):
    with pytest.raises(RobustHubError, match=message):
        load_config(REPO_CONFIGS / "offline.yaml", [override])


def test_yaml_text_numbers_are_read_as_numbers():
    assert load_config(REPO_CONFIGS / "offline.yaml", ["train.lr=1e-3"]).train.lr == 1e-3


def test_parse_fraction_keeps_its_promise():
    from robust_hub.config import parse_fraction

    with pytest.raises(ValueError):
        parse_fraction("8/0")


def test_non_utf8_and_directory_config_paths(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("train:\n  output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RobustHubError, match="not UTF-8"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(RobustHubError, match="is a directory"):
        load_config(tmp_path)
