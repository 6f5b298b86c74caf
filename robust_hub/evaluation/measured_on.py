"""What a record's numbers were measured on: images, subsets and any change to the benchmark's protocol.

Every place that publishes a number (model card table, ``model-index``, ``.eval_results/``, leaderboard rows and
``leaderboard.md``) labels it with :func:`measured_on`, so a number from 200 test images or 2 finetuning epochs
is never shown as the benchmark's. The full split sizes come from the record (``protocol.settings.eval.
full_sizes``, written by ``robust-hub eval``); a record without them cannot prove it used the whole split and is
labelled as not the benchmark's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Settings a finetuning protocol may change without leaving the benchmark: none. Only the eval block (attacks,
# subsets) and the dataset-dependent lr (compared when the dataset is one method.md names) are handled apart.
_IGNORED = {"eval", "name"}


@dataclass(frozen=True)
class MeasuredOn:
    n_test: int
    full_test: int | None
    n_train: int
    full_train: int | None
    n_autoattack: int | None  # images AutoAttack ran on, when fewer than the test images
    changed: tuple[tuple[str, Any, Any], ...]  # (setting, value used, the benchmark's value)

    @property
    def benchmark(self) -> bool:
        """True only when the record proves it ran the benchmark's protocol on the whole splits."""
        return (self.full_test == self.n_test and self.full_train == self.n_train and self.n_autoattack is None
                and not self.changed)

    def parts(self) -> list[str]:
        test = f"{self.n_test} test images" if self.full_test == self.n_test else \
            f"{self.n_test} of {self.full_test if self.full_test else '?'} test images"
        out = [test]
        if self.n_autoattack is not None:
            out.append(f"AutoAttack on the first {self.n_autoattack}")
        if self.full_train != self.n_train:
            out.append(f"finetuned on {self.n_train} of {self.full_train if self.full_train else '?'} training images")
        return out + [f"{key} {_show(value)} (benchmark {_show(want)})" for key, value, want in self.changed]

    def text(self) -> str:
        """One line, e.g. '200 of 10000 test images, AutoAttack on the first 50, epochs 2 (benchmark 25); shortened'."""
        return ", ".join(self.parts()) + ("" if self.benchmark else "; not the benchmark's protocol")

    def tag(self) -> str:
        """A short, name-safe marker of the subset (empty for the benchmark), for dataset configs and task ids."""
        if self.benchmark:
            return ""
        bits = [f"test{self.n_test}"]
        if self.n_autoattack is not None:
            bits.append(f"aa{self.n_autoattack}")
        if self.full_train != self.n_train:
            bits.append(f"train{self.n_train}")
        bits += [key.replace("_", "") + (str(value) if isinstance(value, (int, float)) else "") for key, value, _ in self.changed]
        return "subset-" + "-".join(bits)


def measured_on(record: dict[str, Any]) -> MeasuredOn:
    """The one derivation of a record's measurement scope, used by every renderer."""
    from robust_hub.evaluation.presets import PRESETS, UNIFORM, preset_settings
    from robust_hub.evaluation.protocols import LINEAR_LR, default_protocol_config

    settings, dataset = record["protocol"]["settings"], record["dataset"]
    ev = settings.get("eval") or {}
    full = ev.get("full_sizes") or {}
    n_aa = ev.get("n_autoattack")
    uses_aa = "autoattack" in record.get("metric_set", []) or ev.get("eps_curve_attack") == "autoattack"
    aa_subset = n_aa if uses_aa and isinstance(n_aa, int) and n_aa < dataset["n_test"] else None
    changed = []
    name = record["protocol"]["name"]
    short = Path(dataset["source"]).name.lower()
    image_size = settings.get("image_size") or 32
    default = default_protocol_config(name, short, eps=record["threat"]["eps"], norm=record["threat"]["norm"],
                                      image_size=image_size).to_dict()
    preset = settings.get("preset", UNIFORM)  # a named preset's settings are what it promises, not a change
    default.update(preset_settings(preset, name, short, image_size) if preset in PRESETS else {})
    for key, value in sorted(settings.items()):
        # an unknown dataset's lr has no benchmark value to compare with
        if key in _IGNORED or key not in default or (key == "lr" and short not in LINEAR_LR and short != "stl10"):
            continue
        if _norm(value) != _norm(default[key]):
            changed.append((key, value, default[key]))
    return MeasuredOn(dataset["n_test"], full.get("test"), dataset["n_train"], full.get("train"), aa_subset,
                      tuple(changed))


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return round(value, 10) if isinstance(value, float) else value


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_show(v)}" for k, v in value.items()) + "}"
    return str(value)
