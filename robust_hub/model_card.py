"""The one model card: every card robust-hub writes (after training, by `robust-hub card`, by `push`) is rendered
here, from one set of facts, with one template (``model_cards/model_card.md``, rendered by huggingface_hub).

The facts are what the model directory's ``config.json`` records (architecture, the training recipe, what the run
actually did, a post-processing or a conversion) plus the verified results given by the caller (each with the
images and protocol it was measured on, see :mod:`robust_hub.evaluation.measured_on`) and the plots written
beside the card. The card shows no path of the machine it was made on: a local path is shown by its last part.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.measured_on import measured_on
from robust_hub.evaluation.presets import preset_note

TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "model_card.md"
MARKER = "<!-- robust-hub model card: `robust-hub card` and `robust-hub push` rewrite this file -->"
METRICS = (("clean_acc", "clean accuracy"), ("pgd20_acc", "PGD-20 robust accuracy"),
           ("autoattack_acc", "AutoAttack robust accuracy"))
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "stl10": "tanganke/stl10"}
TRAINING_PLOTS = (("training_loss.png", "Mean training loss per epoch"),
                  ("coreset_selections.png", "Coreset selections: time, greedy gains, class balance"))
NOT_EVALUATED = "Not evaluated yet: run `robust-hub eval` on this model, then `robust-hub card` or `robust-hub push`."


@dataclass
class Published:
    """A verified record as the card shows it: the model commit it evaluated (None: these local weights) and
    where it came from."""

    record: dict
    source: str
    model_commit: str | None = None


@dataclass
class CardInputs:
    config: dict  # the model directory's config.json
    weights_sha: str = ""  # of model.safetensors; only needed with results
    results: list[Published] = field(default_factory=list)
    training_plots: list[tuple[str, str]] = field(default_factory=list)  # (path beside the card, caption)
    result_plots: list[tuple[str, str]] = field(default_factory=list)
    repo_id: str | None = None
    endpoint: str = "https://huggingface.co"


# ------------------------------------------------------------------------------------------- no local paths
def public_name(value: Any) -> Any:
    """``value`` with a path of this machine reduced to its last part (Hub ids, URLs and other strings unchanged)."""
    if not isinstance(value, str) or ("/" not in value and os.sep not in value) or "://" in value:
        return value
    if value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or Path(value).exists():
        return f"{Path(value).name} (local)"
    return value


def dataset_id(source: str) -> str:
    """The Hub dataset a record's data source is (a local copy of CIFAR-10 is uoft-cs/cifar10)."""
    name = Path(source).name.lower()
    if source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists():
        return source
    return HUB_DATASETS.get(name, name or source)


# ------------------------------------------------------------------------------------------- results
def _cell(r: dict, metric: str, value: float | None) -> str:
    """A table cell: the accuracy in %, 'withheld' when the suite withheld it, empty when it was not measured."""
    if metric not in r["metric_set"]:
        return ""
    return "withheld" if value is None else f"{100 * value:.2f}"


def _eps(r: dict) -> str:
    return f"{r['threat']['eps'] * 255:g}/255" if r["threat"]["norm"] == "linf" else f"{r['threat']['eps']:g}"


def metric_values(r: dict) -> list[tuple[str, str, float]]:
    m = r["metrics"]
    out = [(key, name, m[key]) for key, name in METRICS if m.get(key) is not None]
    if m.get("c10c"):
        out.append(("c10c_acc", "CIFAR-10-C accuracy" + (" (generated set)" if m["c10c"]["generated"] else ""),
                    m["c10c"]["mean"]))
    return out


def task_id(r: dict, metric: str) -> str:
    """e.g. ``slf-autoattack-linf-8-255``; a subset or changed protocol adds its tag, so it is another task."""
    t = r["threat"]
    eps = f"{t['eps'] * 255:g}-255" if t["norm"] == "linf" else f"{t['eps']:g}"
    tag = measured_on(r).tag()
    return f"{r['protocol']['name']}-{metric.removesuffix('_acc')}-{t['norm']}-{eps}" + (f"-{tag}" if tag else "")


def _commit_cell(p: Published, inputs: CardInputs) -> str:
    here = " (these weights)" if p.record["model"]["weights_sha256"] == inputs.weights_sha else ""
    if p.model_commit is None:
        return f"local{here}"
    url = f"{inputs.endpoint}/{inputs.repo_id}/commit/{p.model_commit}"
    return f"[`{p.model_commit[:7]}`]({url}){here}"


def results_table(inputs: CardInputs) -> str:
    if not inputs.results:
        return NOT_EVALUATED
    lines = ["| model commit | protocol | data | measured on | threat | clean | PGD-20 | AutoAttack | CIFAR-10-C | flags "
             "| source |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(inputs.results, key=lambda p: (p.record["created_at"], p.record["protocol"]["name"]), reverse=True)
    for p in order:
        r, m = p.record, p.record["metrics"]
        c10c = "" if not m.get("c10c") else _cell(r, "c10c", m["c10c"]["mean"]) + (" (generated)" if m["c10c"]["generated"] else "")
        lines.append(f"| {_commit_cell(p, inputs)} | {r['protocol']['name'].upper()} (epochs "
                     f"{r['protocol']['settings'].get('epochs')}{preset_note(r)}) | {public_name(r['dataset']['source'])} "
                     f"| {measured_on(r).text()} | {r['threat']['norm']} {_eps(r)} | {_cell(r, 'clean', m.get('clean_acc'))} "
                     f"| {_cell(r, 'pgd20', m.get('pgd20_acc'))} | {_cell(r, 'autoattack', m.get('autoattack_acc'))} "
                     f"| {c10c} "
                     f"| {', '.join(r['flags']) or '-'} | {p.source} |")
    return "\n".join(lines)


def model_index(inputs: CardInputs) -> list:
    """``model-index`` entries; a subset's dataset name, config and split say so, so no widget shows it as the
    benchmark's number."""
    from huggingface_hub import EvalResult

    out = []
    for p in inputs.results:
        r, scope = p.record, measured_on(p.record)
        name = Path(r["dataset"]["source"]).name
        split = r["dataset"]["split"] if scope.full_test == scope.n_test else f"{r['dataset']['split']}[:{scope.n_test}]"
        commit = f" @ {p.model_commit[:7]}" if p.model_commit else ""
        for key, metric, value in metric_values(r):
            out.append(EvalResult(
                task_type="image-classification",
                task_name=f"{r['protocol']['name'].upper()} linear/finetuned eval"
                          + ("" if scope.benchmark else " (not the benchmark's protocol)"),
                dataset_type=dataset_id(r["dataset"]["source"]),
                dataset_name=name if scope.benchmark else f"{name} ({scope.text()})",
                dataset_config=scope.tag() or None, dataset_split=split,
                dataset_args={"n_test": scope.n_test, "n_train": scope.n_train,
                              **({"n_autoattack": scope.n_autoattack} if scope.n_autoattack else {})},
                metric_type="accuracy", metric_value=round(100 * value, 2),
                metric_name=f"{metric} ({r['threat']['norm']} {_eps(r)}){commit}"
                            + ("" if scope.benchmark else f" [{scope.tag()}]"),
                source_name=p.source.split(" (")[0] if p.model_commit else None,
                source_url=f"{inputs.endpoint}/{inputs.repo_id}/commit/{p.model_commit}" if p.model_commit else None))
    return out


def eval_results_yaml(p: Published, inputs: CardInputs) -> str:
    """One ``.eval_results/*.yaml`` file for a record: the same numbers as fractions, each labelled."""
    import yaml
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    r, scope = p.record, measured_on(p.record)
    notes = (f"{'' if scope.benchmark else 'SUBSET / shortened protocol, not the benchmark: '}measured on "
             f"{scope.text()}; robust-hub {r['protocol']['name'].upper()}, model commit {p.model_commit}; flags: "
             f"{', '.join(r['flags']) or 'none'}; source: {p.source}")
    entries = [EvalResultEntry(dataset_id=dataset_id(r["dataset"]["source"]), task_id=task_id(r, key), value=value,
                               date=r["created_at"], notes=notes) for key, _, value in metric_values(r)]
    return yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False)


# ------------------------------------------------------------------------------------------- training facts
def _recipe_rows(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every key of the saved training config, flattened (sections added later show up without code changes)."""
    if isinstance(tree, dict):
        return [row for k, v in tree.items() for row in _recipe_rows(v, f"{prefix}{k}.")]
    value = public_name(tree)
    if prefix.rstrip(".").endswith("_dir") and isinstance(tree, str) and tree:  # output and cache folders
        value = f"{Path(tree).name} (local)"
    return [(prefix.rstrip("."), value if isinstance(value, str) else json.dumps(value))]


def _run_config(recipe: dict):
    """The recipe as a RunConfig, or None when it is not one this version reads (older or hand-made)."""
    from robust_hub.config import from_dict

    try:
        return from_dict(recipe) if recipe else None
    except (RobustHubError, TypeError, ValueError):
        return None


def what_the_run_did(training: dict) -> str | None:
    """e.g. '10 optimiser steps of 128 images over 1 epoch(s) = 1280 images seen, from a training set of 49500
    (train.max_steps_per_epoch=10 cut each epoch short)'."""
    run = training.get("run")
    if not run:
        return None
    text = (f"{run['steps']} optimiser steps of {run['batch_size']} images over {run['epochs']} epoch(s) = "
            f"{run['images_seen']} images seen, from a training set of {run['train_images']}")
    if run.get("max_steps_per_epoch"):
        text += f" (train.max_steps_per_epoch={run['max_steps_per_epoch']} cut each epoch short)"
    if run.get("val_images"):
        text += f"; {run['val_images']} held-out validation images"
    if run.get("coreset_selections"):
        text += f"; {run['coreset_selections']} coreset selection(s) of {', '.join(map(str, run['coreset_sizes']))} images"
    return text


def _pixels(value: float) -> str:
    return f"{value * 255:g}/255"


def _training_values(config: dict) -> dict[str, Any]:
    from robust_hub.training.card import coreset_line, method_details, method_label, method_title, split_text

    training = (config.get("robust_hub") or {}).get("training") or {}
    recipe = training.get("config") or {}
    rc = _run_config(recipe)
    data = training.get("data") or {}
    source = (recipe.get("data") or {}).get("source") or data.get("source")
    run = training.get("run") or {}
    values: dict[str, Any] = dict(
        trained=bool(recipe), recipe_rows=_recipe_rows(recipe), data_source=public_name(source),
        data_fingerprint=data.get("fingerprint") or "not recorded", run_did=what_the_run_did(training),
        hardware=training.get("hardware") or "not recorded", wall_time=training.get("wall_time") or "not recorded",
        run_short=(f"{run['images_seen']} images seen in {run['epochs']} epoch(s), from a training set of "
                   f"{run['train_images']}") if run else None,
        seeds=training.get("seeds"), final_loss=(f"{training['epoch_losses'][-1]:.4f}"
                                                 if training.get("epoch_losses") else "not recorded"),
        method=(recipe.get("method") or {}).get("name"), rc=None,
        epochs=run.get("epochs", (recipe.get("train") or {}).get("epochs")),
        parameters=f"{run['parameters'] / 1e6:.2f}M" if run.get("parameters") else None)
    if rc is not None:
        t, a = rc.train, rc.attack
        values.update(
            rc=rc, method_title=method_title(rc), method_label=method_label(rc), method_details=method_details(rc),
            method=rc.method.name + ("+ir" if rc.method.ir else ""), split=split_text(rc),
            attack=f"L-inf PGD-{a.steps}, eps {_pixels(a.eps)}, step {_pixels(a.alpha)}, random start: {a.random_start}",
            optimiser=(f"LARS lr {t.lr}, momentum {t.momentum}, weight decay {t.weight_decay}, batch {t.batch_size}, "
                       f"{t.lars_convention} convention"),
            schedule=f"{t.warmup_epochs} warm-up epochs, then cosine decay to {t.lr_min} at epoch {t.epochs}",
            coreset=coreset_line(rc), seed=t.seed)
    return values


# ------------------------------------------------------------------------------------------- the card
def render(inputs: CardInputs) -> str:
    """The README.md of a model directory or repository."""
    from huggingface_hub import ModelCard

    config = inputs.config
    rh = config.get("robust_hub") or {}
    post = rh.get("postprocessed")
    values = _training_values(config)
    title = inputs.repo_id or _title(config, values, post)
    versions = ((rh.get("training") or {}).get("versions") or (post or {}).get("versions") or {})
    text = ModelCard.from_template(
        _card_data(inputs, values, title, post), template_path=str(_template()), marker=MARKER, title=title,
        repo_hint=inputs.repo_id or "<your-org>/<model-name>", architecture=config.get("architecture"),
        num_features=config.get("num_features"), num_classes=config.get("num_classes") or 0,
        dual_bn=rh.get("dual_bn"), default_route=rh.get("default_route"),
        input_size="x".join(str(s) for s in (rh.get("input_size") or [3, 32, 32])[1:]),
        mean=_rounded((rh.get("normalization") or {}).get("mean")), std=_rounded((rh.get("normalization") or {}).get("std")),
        converted_from=public_name(rh.get("converted_from")), post=post and _post_values(post), **values,
        dataset=values["data_source"], results=results_table(inputs), training_plots=inputs.training_plots,
        result_plots=inputs.result_plots, published=any(p.model_commit for p in inputs.results),
        evaluated=bool(inputs.results), weights_sha=inputs.weights_sha,
        evidence=any(p.model_commit and p.record.get("evidence") for p in inputs.results),
        versions=", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded")
    return str(text)


def _title(config: dict, values: dict, post: dict | None) -> str:
    architecture = config.get("architecture")
    if post:
        return f"{architecture}, DynACL++ post-processed from `{public_name(post['source_model'])}`"
    if values["rc"]:
        return f"{architecture} {'trained' if config.get('num_classes') else 'pre-trained'} with {values['method_label']}"
    return str(architecture)


def _card_data(inputs: CardInputs, values: dict, title: str, post: dict | None):
    """The card's YAML metadata, ``model-index`` included."""
    from huggingface_hub import ModelCardData

    task = "image-classification" if inputs.config.get("num_classes") else "image-feature-extraction"
    training = (inputs.config.get("robust_hub") or {}).get("training") or {}
    source = ((training.get("config") or {}).get("data") or {}).get("source") or ""
    return ModelCardData(
        model_name=inputs.repo_id.split("/")[1] if inputs.repo_id else title, library_name="timm",
        license="apache-2.0", pipeline_tag=task,
        tags=["robust-hub", "adversarial-robustness",
              "adversarial-training" if inputs.config.get("num_classes") else "self-supervised",
              *([values["method"]] if values["method"] else []), *(["dynacl++"] if post else []), task],
        datasets=[dataset_id(source)] if source and not source.startswith("embedded:") else None,
        base_model=post["source_model"] if post and _is_hub_id(post["source_model"]) else None,
        eval_results=model_index(inputs) or None,
    )


def _rounded(values: list[float] | None) -> list[float] | None:
    return None if values is None else [float(f"{v:.4g}") for v in values]


def _post_values(post: dict) -> dict:
    return {**post, "source_model": public_name(post["source_model"]),
            "dataset": public_name(post["settings"]["dataset"]), "split": post["settings"]["split"],
            "seed": post["settings"]["seed"]}


def _is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


def _template() -> Path:
    if not TEMPLATE.is_file():
        raise RobustHubError(f"model card template {TEMPLATE} is missing; reinstall robust-hub")
    return TEMPLATE


def plots_beside(model_dir: Path) -> list[tuple[str, str]]:
    """The training plots a model directory holds (written by the training run)."""
    return [(name, caption) for name, caption in TRAINING_PLOTS if (Path(model_dir) / name).is_file()]
