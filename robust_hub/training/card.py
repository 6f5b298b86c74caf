"""The model card written beside a pre-trained backbone (huggingface_hub renders the template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from robust_hub.config import RunConfig
from robust_hub.errors import RobustHubError

TEMPLATES = Path(__file__).resolve().parents[1] / "model_cards"
METHOD_TITLES = {"acl": "ACL (adversarial contrastive learning, dual-stream)",
                 "dynacl": "DynACL (dynamic adversarial contrastive learning)",
                 "pgd_at": "PGD adversarial training (supervised)", "trades": "TRADES (supervised adversarial training)"}
METHOD_LABELS = {"acl": "ACL", "dynacl": "DynACL", "pgd_at": "PGD-AT", "trades": "TRADES"}


def method_label(config: RunConfig) -> str:
    """Short name of what a run trains, e.g. ``DynACL+IR``."""
    base = METHOD_LABELS.get(config.method.name, config.method.name)
    return f"{base}+IR" if config.method.ir else base


def method_title(config: RunConfig) -> str:
    me = config.method
    title = METHOD_TITLES.get(me.name, me.name)
    return f"{title} + IR (invariant regularisation, SIR + AIR)" if me.ir else title


def method_details(config: RunConfig) -> str:
    """The method's own settings, for the card's table."""
    me = config.method
    if me.name == "pgd_at":
        return "cross-entropy on PGD examples"
    if me.name == "trades":
        return f"CE(clean) + beta KL(p(x) || p(x_adv)), beta = {me.trades_beta}"
    if me.name == "dynacl":
        text = (f"strength s = 1 - floor((epoch-1)/{me.schedule_period}) * {me.schedule_period}/{config.train.epochs}, "
                "w = (2/3)(1 - s)")
    else:
        text = f"strength s = {me.strength}, w = {me.adv_weight}"
    if me.ir:
        text += (f"; IR lambda1 (SIR) = {me.sir_weight}, lambda2 (AIR) = {me.air_weight}, "
                 f"divergence: {me.ir_divergence} ({IR_DIVERGENCE_NOTES[me.ir_divergence]})")
    return text


IR_DIVERGENCE_NOTES = {"reference": "as the reference code computes it, which produced the papers' numbers",
                       "paper": "the textbook KL of the paper's formula"}


def template_path(name: str = "backbone.md") -> Path:
    path = TEMPLATES / name
    if not path.is_file():
        raise RobustHubError(f"model card template {path} is missing; reinstall robust-hub")
    return path


def _pixels(value: float) -> str:
    return f"{value * 255:g}/255"


def render_backbone_card(model: Any, config: RunConfig, facts: dict[str, Any]) -> str:
    """Markdown for the backbone's README.md; ``facts`` carries run results (loss, times, sizes)."""
    t, a = config.train, config.attack
    classifier = bool(getattr(model, "num_classes", 0))
    task = "image-classification" if classifier else "image-feature-extraction"
    card_data = ModelCardData(
        library_name="timm", license="apache-2.0", pipeline_tag=task,
        tags=["robust-hub", "adversarial-robustness", "adversarial-training" if classifier else "self-supervised",
              config.method.name, *(["invariant-regularization"] if config.method.ir else []), task],
        datasets=[config.data.source] if "/" in config.data.source and not Path(config.data.source).exists() else None,
    )
    versions = facts.get("versions", {})
    values = dict(
        model_name=facts.get("model_name", f"{config.model.arch} {'trained' if classifier else 'pre-trained'} with "
                                           f"{method_label(config)}"),
        num_classes=getattr(model, "num_classes", 0),
        method=config.method.name + ("+ir" if config.method.ir else ""), method_title=method_title(config),
        method_details=method_details(config), lars_convention=t.lars_convention, lr_min=t.lr_min,
        dataset=config.data.source, split=_split_text(config), architecture=model.pretrained_cfg.get("architecture"),
        num_params=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", num_features=model.num_features,
        input_size="x".join(str(s) for s in model.pretrained_cfg.get("input_size", (3, 32, 32))[1:]),
        mean=model.model_args.get("mean"), std=model.model_args.get("std"),
        default_route=model.default_route, dual_bn=model.dual_bn, repo_hint=facts.get("repo_id", "<your-org>/<model-name>"),
        attack_steps=a.steps, eps=_pixels(a.eps), alpha=_pixels(a.alpha), random_start=a.random_start,
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size,
        warmup_epochs=t.warmup_epochs, epochs=t.epochs, seed=t.seed,
        num_train_images=facts.get("num_train_images"), num_val_images=facts.get("num_val_images"),
        hardware=facts.get("hardware", "unknown"), wall_time=facts.get("wall_time", "unknown"),
        final_loss=facts.get("final_loss", "n/a"), loss_plot=facts.get("loss_plot"), coreset=_coreset_line(config),
        coreset_plot=facts.get("coreset_plot"),
        evaluation=facts.get("evaluation") or "Not evaluated yet: run `robust-hub eval` on this model and its results are added here.",
        versions=", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown",
    )
    return str(ModelCard.from_template(card_data, template_path=str(template_path()), **values))


def _split_text(config: RunConfig) -> str:
    """The split, and the subset of it when ``data.subset`` cut the run to the first N images."""
    d = config.data
    return d.split if d.subset is None else f"{d.split}, first {d.subset} images only (data.subset)"


SELECTION_VARIANTS = {("row_mean", "acl"): "the reference's selection (row-mean gains, plain ACL loss)"}


def _coreset_line(config: RunConfig) -> str | None:
    c = config.coreset
    if c.mode == "none":
        return None
    what = "RCS (robustness-aware coreset selection)" if c.mode == "rcs" else "a random subset (baseline)"
    variant = SELECTION_VARIANTS.get((c.gain_vector, c.selection_loss), "a variant of the reference's selection")
    detail = (f", RD {c.rd}, {c.approximation.replace('_', '-')} gradients, gains on {c.gain_vector.replace('_', '-')} "
              f"vectors, selection loss {c.selection_loss}, effective step eta {c.eta:g}: {variant}"
              if c.mode == "rcs" else "")
    return (f"{what}, fraction {c.fraction:g}, full set for {c.warmup_epochs} epochs, then a new coreset every "
            f"{c.interval} epochs{detail}")


def loss_curve_png(epoch_losses: list[float], title: str) -> bytes:
    """A PNG of the mean training loss per epoch, for the model card."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.plot(range(1, len(epoch_losses) + 1), epoch_losses, marker="o")
    axis.set(xlabel="epoch", ylabel="mean training loss", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
