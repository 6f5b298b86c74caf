"""The card a pushed model gets: recipe, verified results (table, ``model-index``, ``.eval_results/``) and plots.

Results are kept in the model repository itself, so pushing again never loses them: ``eval_records/*.json``
holds every evaluation record ever published for the repo, each wrapped with the model commit it was computed
on. A push reads what is there, adds the records that evaluate the weights being pushed (matched by sha256) or
that the leaderboard computed for a commit of this repo, and renders the table, the ``model-index`` metadata and
one ``.eval_results/*.yaml`` file per record from the union. Local evaluations are pinned to the commit that
uploads their weights (the push's first commit); the card goes in a second commit on top of it.

huggingface_hub renders the card (``ModelCard.from_template``, ``ModelCardData``, ``EvalResult``) and serialises
the ``.eval_results`` entries (``EvalResultEntry``). The ``evaluate`` package is not used: its ``push_to_hub``
writes one metric per call through ``metadata_update`` (a commit each), checks the dataset against the Hub (our
datasets are often local parquet copies), knows nothing of ``.eval_results/`` or of pinning a result to a
commit, and adds a dependency for what the calls above already do.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.loading import sha256_file
from robust_hub.evaluation.presets import preset_note
from robust_hub.evaluation.records import EvalRecord, load_records

TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "published.md"
RECORDS_DIR, EVAL_RESULTS_DIR, PLOTS_DIR = "eval_records", ".eval_results", "plots"
METRICS = (("clean_acc", "clean accuracy"), ("pgd20_acc", "PGD-20 robust accuracy"),
           ("autoattack_acc", "AutoAttack robust accuracy"))
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "stl10": "tanganke/stl10"}


# ------------------------------------------------------------------------------------------- records
def published_entry(record: dict, commit: str, source: str) -> dict:
    return {"model_commit": commit, "source": source, "record": record}


def entry_name(entry: dict) -> str:
    r = entry["record"]
    digest = hashlib.sha256(json.dumps([entry["model_commit"], r["protocol"], r["dataset"]["fingerprint"],
                                        r["metric_set"], r["threat"]], sort_keys=True).encode()).hexdigest()[:12]
    return f"{entry['model_commit'][:7]}_{r['protocol']['name']}_{digest}"


def collect_results(model_dir: Path, repo_id: str, sources: list[str]) -> tuple[list[dict], list[dict]]:
    """(records of these weights from eval --out dirs, leaderboard entries for this repo) from ``sources``.

    A source is an ``robust-hub eval --out`` directory, or a leaderboard store (directory or hf://datasets/...),
    whose results are the leaderboard's own records for a commit of this repo.
    """
    from robust_hub.leaderboard.store import LocalStore, open_store

    digest = sha256_file(model_dir / "model.safetensors")
    local, leaderboard = [], []
    for source in sources:
        is_store = source.startswith("hf://") or (Path(source) / "results").is_dir() or (Path(source) / "requests").is_dir()
        if not is_store:
            if not Path(source).is_dir():
                raise RobustHubError(f"results directory {source} does not exist")
            local += [r.to_dict() for r in load_records(source) if r.model.weights_sha256 == digest]
            continue
        store = open_store(source)
        for path in store.list("results"):
            try:
                payload = json.loads(store.read(path))
                record = EvalRecord.from_dict(payload["record"]).to_dict()
            except (KeyError, TypeError, ValueError, RobustHubError) as error:
                raise RobustHubError(f"{source}/{path} is not a leaderboard result ({error})") from None
            if record["model"]["id"] == repo_id:
                leaderboard.append(published_entry(record, record["model"]["revision"],
                                                   f"robust-hub leaderboard ({store.location}, request "
                                                   f"{payload.get('request_id')})"))
        if isinstance(store, LocalStore) and not store.root.is_dir():
            raise RobustHubError(f"leaderboard store {source} does not exist")
    return local, leaderboard


# ------------------------------------------------------------------------------------------- metadata
def _dataset_id(source: str) -> str:
    name = Path(source).name.lower()
    if "/" in source and not source.startswith((".", "/")) and not Path(source).exists():
        return source
    return HUB_DATASETS.get(name, name or source)


def _task_id(r: dict, metric: str) -> str:
    t = r["threat"]
    eps = f"{t['eps'] * 255:g}-255" if t["norm"] == "linf" else f"{t['eps']:g}"
    return f"{r['protocol']['name']}-{metric.removesuffix('_acc')}-{t['norm']}-{eps}"


def _values(r: dict) -> list[tuple[str, str, float]]:
    m = r["metrics"]
    out = [(key, name, m[key]) for key, name in METRICS if m.get(key) is not None]
    if m.get("c10c"):
        out.append(("c10c_acc", "CIFAR-10-C accuracy" + (" (generated set)" if m["c10c"]["generated"] else ""),
                    m["c10c"]["mean"]))
    return out


def _notes(entry: dict) -> str:
    r = entry["record"]
    return (f"robust-hub {r['protocol']['name'].upper()}, model commit {entry['model_commit']}, "
            f"{r['dataset']['n_test']} test images; flags: {', '.join(r['flags']) or 'none'}; source: {entry['source']}")


def eval_results_yaml(entry: dict) -> str:
    import yaml
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    r = entry["record"]
    entries = [EvalResultEntry(dataset_id=_dataset_id(r["dataset"]["source"]), task_id=_task_id(r, key), value=value,
                               date=r["created_at"], notes=_notes(entry)) for key, _, value in _values(r)]
    return yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False)


def model_index(entries: list[dict], endpoint: str, repo_id: str) -> list:
    from huggingface_hub import EvalResult

    out = []
    for entry in entries:
        r = entry["record"]
        for key, name, value in _values(r):
            out.append(EvalResult(
                task_type="image-classification", task_name=f"{r['protocol']['name'].upper()} linear/finetuned eval",
                dataset_type=_dataset_id(r["dataset"]["source"]), dataset_name=Path(r["dataset"]["source"]).name,
                dataset_split=r["dataset"]["split"], metric_type="accuracy", metric_value=round(100 * value, 2),
                metric_name=f"{name} ({r['threat']['norm']} {_eps_text(r)}) @ {entry['model_commit'][:7]}",
                source_name=entry["source"].split(" (")[0],
                source_url=f"{endpoint}/{repo_id}/commit/{entry['model_commit']}"))
    return out


def _eps_text(r: dict) -> str:
    return f"{r['threat']['eps'] * 255:g}/255" if r["threat"]["norm"] == "linf" else f"{r['threat']['eps']:g}"


# ------------------------------------------------------------------------------------------- plots
def _png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure = draw(plt)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def plots(records: list[dict], epoch_losses: list[float]) -> dict[str, bytes]:
    """PNG plots of the current weights' results: accuracy vs eps, CIFAR-10-C heatmap, training loss."""
    out: dict[str, bytes] = {}
    curves = [(r, attack, curve) for r in records for attack, curve in ((r["metrics"].get("eps_curve") or {}).items())]
    if curves:
        def eps_plot(plt):
            figure, axis = plt.subplots(figsize=(5, 3.2))
            for r, attack, curve in curves:
                points = sorted((float(e), v) for e, v in curve.items() if v is not None)
                axis.plot([255 * e for e, _ in points], [100 * v for _, v in points], marker="o",
                          label=f"{r['protocol']['name'].upper()} {attack}")
            axis.set(xlabel="eps (x/255)", ylabel="robust accuracy (%)", title="Accuracy against eps")
            axis.grid(alpha=0.3)
            axis.legend()
            return figure
        out["accuracy_vs_eps.png"] = _png(eps_plot)
    c10c = [r for r in records if r["metrics"].get("c10c")]
    if c10c:
        r = c10c[0]
        per = r["metrics"]["c10c"]["per_corruption"]
        names = sorted(per)

        def heatmap(plt):
            figure, axis = plt.subplots(figsize=(6, 0.3 * len(names) + 1.5))
            grid = [[100 * per[n].get(str(s), float("nan")) for s in range(1, 6)] for n in names]
            image = axis.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
            axis.set(xticks=range(5), xticklabels=[str(s) for s in range(1, 6)], yticks=range(len(names)),
                     yticklabels=names, xlabel="severity",
                     title=f"CIFAR-10-C accuracy (%), {r['protocol']['name'].upper()}"
                           + (" (generated set)" if r["metrics"]["c10c"]["generated"] else ""))
            figure.colorbar(image, ax=axis)
            return figure
        out["cifar10c.png"] = _png(heatmap)
    if epoch_losses:
        def losses(plt):
            figure, axis = plt.subplots(figsize=(5, 3))
            axis.plot(range(1, len(epoch_losses) + 1), epoch_losses, marker="o")
            axis.set(xlabel="epoch", ylabel="mean training loss", title="Training curve")
            axis.grid(alpha=0.3)
            return figure
        out["training_loss.png"] = _png(losses)
    return out


# ------------------------------------------------------------------------------------------- card
def _recipe_rows(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every key of the saved training config, flattened (sections added later show up without code changes)."""
    if isinstance(tree, dict):
        return [row for k, v in tree.items() for row in _recipe_rows(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), json.dumps(tree) if not isinstance(tree, str) else tree)]


def _pct(value: float | None) -> str:
    return "withheld" if value is None else f"{100 * value:.2f}"


def results_table(entries: list[dict], current_sha: str, endpoint: str, repo_id: str) -> str:
    if not entries:
        return "No evaluation results yet: run `robust-hub eval` on this model, or submit it to a leaderboard."
    lines = ["| model commit | protocol | data | threat | clean | PGD-20 | AutoAttack | CIFAR-10-C | flags | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["record"]["created_at"], entry_name(e)), reverse=True):
        r, m = e["record"], e["record"]["metrics"]
        here = " (these weights)" if r["model"]["weights_sha256"] == current_sha else ""
        c10c = "" if not m.get("c10c") else _pct(m["c10c"]["mean"]) + (" (generated)" if m["c10c"]["generated"] else "")
        lines.append(f"| [`{e['model_commit'][:7]}`]({endpoint}/{repo_id}/commit/{e['model_commit']}){here} "
                     f"| {r['protocol']['name'].upper()} (epochs {r['protocol']['settings'].get('epochs')}{preset_note(r)}) "
                     f"| {Path(r['dataset']['source']).name}, {r['dataset']['n_test']} test images "
                     f"| {r['threat']['norm']} {_eps_text(r)} | {_pct(m.get('clean_acc'))} | {_pct(m.get('pgd20_acc'))} "
                     f"| {_pct(m.get('autoattack_acc'))} | {c10c} | {', '.join(r['flags']) or '-'} | {e['source']} |")
    return "\n".join(lines)


def render_card(config: dict, repo_id: str, entries: list[dict], weights_sha: str, plot_names: list[str],
                endpoint: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    rh = config.get("robust_hub", {})
    training = rh.get("training") or {}
    recipe = training.get("config") or {}
    method = (recipe.get("method") or {}).get("name", "unknown")
    source = (recipe.get("data") or {}).get("source")
    card_data = ModelCardData(
        model_name=repo_id.split("/")[1], library_name="timm", license="apache-2.0",
        pipeline_tag="image-feature-extraction", tags=["robust-hub", "adversarial-robustness", "self-supervised", method],
        datasets=[_dataset_id(source)] if source and not source.startswith("embedded:") else None,
        eval_results=model_index(entries, endpoint, repo_id) or None,
    )
    data = training.get("data") or {}
    values = dict(
        repo_id=repo_id, architecture=config.get("architecture"), method=method,
        num_features=config.get("num_features"), dual_bn=rh.get("dual_bn"), default_route=rh.get("default_route"),
        input_size="x".join(str(s) for s in (rh.get("input_size") or [3, 32, 32])[1:]),
        recipe_rows=_recipe_rows(recipe), trained=bool(recipe), converted_from=rh.get("converted_from"),
        data_source=source or data.get("source"), data_fingerprint=data.get("fingerprint") or "not recorded",
        epochs=(recipe.get("train") or {}).get("epochs"), hardware=training.get("hardware") or "not recorded",
        wall_time=training.get("wall_time") or "not recorded", seeds=training.get("seeds"),
        versions=", ".join(f"{k} {v}" for k, v in (training.get("versions") or {}).items()) or "not recorded",
        results=results_table(entries, weights_sha, endpoint, repo_id), plots=plot_names, plots_dir=PLOTS_DIR,
        weights_sha=weights_sha,
    )
    return str(ModelCard.from_template(card_data, template_path=str(TEMPLATE), **values))


def _existing_entries(api, repo_id: str, revision: str) -> list[dict]:
    from huggingface_hub import hf_hub_download

    out = []
    for name in sorted(f for f in api.list_repo_files(repo_id, revision=revision) if re.fullmatch(rf"{RECORDS_DIR}/[^/]+\.json", f)):
        path = hf_hub_download(repo_id, name, revision=revision)
        try:
            entry = json.loads(Path(path).read_text(encoding="utf-8"))
            EvalRecord.from_dict(entry["record"])
        except (KeyError, TypeError, ValueError, RobustHubError) as error:
            raise RobustHubError(f"{repo_id}: {name} is not a published evaluation record ({error}); "
                                 "fix or remove it before pushing") from None
        out.append(entry)
    return out


def card_operations(api, repo_id: str, model_dir: Path, config: dict, head: str, local: list[dict],
                    leaderboard: list[dict]) -> list:
    """README.md, plots, records and .eval_results for a commit on top of ``head`` (local results pinned to it)."""
    from huggingface_hub import CommitOperationAdd

    new = [published_entry(r, head, "robust-hub eval (the pusher's run)") for r in local] + leaderboard
    entries = {entry_name(e): e for e in _existing_entries(api, repo_id, head)}
    entries.update({entry_name(e): e for e in new})
    weights_sha = sha256_file(model_dir / "model.safetensors")
    current = [e["record"] for e in entries.values() if e["record"]["model"]["weights_sha256"] == weights_sha]
    losses = ((config.get("robust_hub") or {}).get("training") or {}).get("epoch_losses") or []
    images = plots(current, losses)
    card = render_card(config, repo_id, list(entries.values()), weights_sha, sorted(images), api.endpoint)
    ops = [CommitOperationAdd("README.md", card.encode())]
    ops += [CommitOperationAdd(f"{PLOTS_DIR}/{name}", data) for name, data in sorted(images.items())]
    for name, entry in sorted(entries.items()):
        ops.append(CommitOperationAdd(f"{RECORDS_DIR}/{name}.json", json.dumps(entry, indent=2, sort_keys=True).encode()))
        ops.append(CommitOperationAdd(f"{EVAL_RESULTS_DIR}/robust-hub_{name}.yaml", eval_results_yaml(entry).encode()))
    return ops
