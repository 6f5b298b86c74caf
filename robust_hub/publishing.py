"""What a push publishes besides the weights: verified results (table, ``model-index``, ``.eval_results/``), plots
and the card (rendered by :mod:`robust_hub.model_card`, the one card module).

Results are kept in the model repository itself, so pushing again never loses them: ``eval_records/*.json``
holds every evaluation record ever published for the repo, each wrapped with the model commit it was computed
on. A push reads what is there, adds the records that evaluate the weights being pushed (matched by sha256) and
the leaderboard's results for a commit of this repo that pass the leaderboard's own verification
(:func:`robust_hub.leaderboard.results.load_results`: signature, schema, model and commit), and renders the table, the ``model-index`` metadata and
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

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.loading import sha256_file
from robust_hub.evaluation.records import EvalRecord, evidence_files, load_records
from robust_hub.model_card import (TRAINING_PLOTS, CardInputs, Published, eval_results_yaml, plots_beside,
                                   public_name, render)

RECORDS_DIR, EVAL_RESULTS_DIR, PLOTS_DIR = "eval_records", ".eval_results", "plots"


# ------------------------------------------------------------------------------------------- records
def published_entry(record: dict, commit: str, source: str) -> dict:
    return {"model_commit": commit, "source": source, "record": record}


def entry_name(entry: dict) -> str:
    r = entry["record"]
    digest = hashlib.sha256(json.dumps([entry["model_commit"], r["protocol"], r["dataset"]["fingerprint"],
                                        r["metric_set"], r["threat"]], sort_keys=True).encode()).hexdigest()[:12]
    return f"{entry['model_commit'][:7]}_{r['protocol']['name']}_{digest}"


def is_store(source: str) -> bool:
    """A leaderboard store (rather than an eval --out directory)."""
    return source.startswith("hf://") or (Path(source) / "results").is_dir() or (Path(source) / "requests").is_dir()


def collect_results(model_dir: Path, repo_id: str, sources: list[str],
                    key: bytes | None = None) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(records of these weights from eval --out dirs, verified leaderboard entries for this repo, refused files).

    A source is a ``robust-hub eval --out`` directory, whose records count only when they evaluate exactly these
    weights (sha256), or a leaderboard store (directory or hf://datasets/...), whose results count only when
    they pass the verification ``leaderboard build`` applies, with the leaderboard's key ``key``.
    """
    from robust_hub.leaderboard.results import load_results
    from robust_hub.leaderboard.store import LocalStore, open_store

    digest = sha256_file(model_dir / "model.safetensors")
    local, leaderboard, refused = [], [], {}
    for source in sources:
        if not is_store(source):
            if not Path(source).is_dir():
                raise RobustHubError(f"results directory {source} does not exist")
            local += [r.to_dict() for r in load_records(source) if r.model.weights_sha256 == digest]
            continue
        if key is None:
            raise RobustHubError(f"{source} is a leaderboard store: its results are published only when verified "
                                 "with the leaderboard's key; give --key-file or set ROBUST_HUB_LEADERBOARD_KEY")
        store = open_store(source)
        if isinstance(store, LocalStore) and not store.root.is_dir():
            raise RobustHubError(f"leaderboard store {source} does not exist")
        verified, rejected = load_results(store, key)
        refused.update({f"{store.location}/{path}": reason for path, reason in rejected.items()})
        leaderboard += [published_entry(v.record, v.record["model"]["revision"],
                                        f"robust-hub leaderboard ({public_name(store.location)}, request {v.request_id})")
                        for v in verified if v.record["model"]["id"] == repo_id]
    return local, leaderboard, refused


def evidence_to_upload(sources: list[str], local: list[dict], leaderboard: list[dict]) -> dict[str, Path | bytes]:
    """The evidence of the published records (path in the record -> its file or bytes), each checked against the
    sha256 its record names: a push uploads them beside the records, at the paths the records name. A local
    record's files are in its eval directory; a leaderboard result's in its store, at the same path."""
    from robust_hub.evaluation.records import EVIDENCE_DIR
    from robust_hub.leaderboard.store import open_store

    files: dict[str, Path | bytes] = {}
    stores = [open_store(s) for s in sources if is_store(s)]
    for entry in (e for published in leaderboard for e in evidence_files(published["record"])):
        found = [data for data in map(lambda store: _stored(store, entry["path"]), stores)
                 if data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]]
        if not found:
            raise RobustHubError(f"{entry['path']}: the evidence of a leaderboard result is in none of the stores "
                                 "given, or not what the result names")
        files[entry["path"]] = found[0]
    for source in (s for s in sources if not is_store(s)):
        here = [r.to_dict() for r in load_records(source)]
        for record in (r for r in here if r in local):
            for entry in evidence_files(record):
                path = Path(source) / entry["path"]
                if (Path(source) / EVIDENCE_DIR).is_symlink() or path.is_symlink() or not path.is_file() \
                        or sha256_file(path) != entry["sha256"]:
                    raise RobustHubError(f"{path}: the evidence of a record in {source} is missing, a link, or not "
                                         "what the record names; rerun that evaluation (`robust-hub verify` checks it)")
                files[entry["path"]] = path
    return files


def _stored(store, path: str) -> bytes | None:
    try:
        return store.read(path)
    except RobustHubError:
        return None


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


def _published(entry: dict) -> Published:
    return Published(entry["record"], entry["source"], entry["model_commit"])


def card_operations(api, repo_id: str, model_dir: Path, config: dict, head: str, local: list[dict],
                    leaderboard: list[dict], evidence: dict[str, Path | bytes] | None = None) -> list:
    """README.md, plots, records and .eval_results for a commit on top of ``head`` (local results pinned to it),
    and the records' ``evidence`` files at the paths the records name."""
    from huggingface_hub import CommitOperationAdd

    new = [published_entry(r, head, "robust-hub eval (the pusher's run)") for r in local] + leaderboard
    entries = {entry_name(e): e for e in _existing_entries(api, repo_id, head)}
    entries.update({entry_name(e): e for e in new})
    weights_sha = sha256_file(model_dir / "model.safetensors")
    current = [e["record"] for e in entries.values() if e["record"]["model"]["weights_sha256"] == weights_sha]
    losses = ((config.get("robust_hub") or {}).get("training") or {}).get("epoch_losses") or []
    images = plots(current, losses)
    inputs = CardInputs(config, weights_sha, [_published(e) for e in entries.values()],
                        training_plots=[(f"{PLOTS_DIR}/{n}", c) for n, c in TRAINING_PLOTS if n in images]
                        + [(n, c) for n, c in plots_beside(model_dir) if n != "training_loss.png"],
                        result_plots=[(f"{PLOTS_DIR}/{n}", n.removesuffix(".png").replace("_", " "))
                                      for n in sorted(images) if n != "training_loss.png"],
                        repo_id=repo_id, endpoint=api.endpoint)
    ops = [CommitOperationAdd("README.md", render(inputs).encode())]
    ops += [CommitOperationAdd(f"{PLOTS_DIR}/{name}", data) for name, data in sorted(images.items())]
    ops += [CommitOperationAdd(name, data if isinstance(data, bytes) else str(data))
            for name, data in sorted((evidence or {}).items())]
    for name, entry in sorted(entries.items()):
        ops.append(CommitOperationAdd(f"{RECORDS_DIR}/{name}.json", json.dumps(entry, indent=2, sort_keys=True).encode()))
        ops.append(CommitOperationAdd(f"{EVAL_RESULTS_DIR}/robust-hub_{name}.yaml",
                                      eval_results_yaml(_published(entry), inputs).encode()))
    return ops
