"""The model card written beside a pre-trained backbone (huggingface_hub renders the template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from robust_hub.config import RunConfig
from robust_hub.errors import RobustHubError

TEMPLATES = Path(__file__).resolve().parents[1] / "model_cards"
METHOD_TITLES = {"acl": "ACL (adversarial contrastive learning, dual-stream)"}


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
    card_data = ModelCardData(
        library_name="timm", license="apache-2.0", pipeline_tag="image-feature-extraction",
        tags=["robust-hub", "adversarial-robustness", "self-supervised", config.method.name, "image-feature-extraction"],
        datasets=[config.data.source] if "/" in config.data.source and not Path(config.data.source).exists() else None,
    )
    versions = facts.get("versions", {})
    values = dict(
        model_name=facts.get("model_name", f"{config.model.arch} pre-trained with {config.method.name.upper()}"),
        method=config.method.name, method_title=METHOD_TITLES.get(config.method.name, config.method.name),
        dataset=config.data.source, split=config.data.split, architecture=model.pretrained_cfg.get("architecture"),
        num_params=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", num_features=model.num_features,
        input_size="x".join(str(s) for s in model.pretrained_cfg.get("input_size", (3, 32, 32))[1:]),
        mean=model.model_args.get("mean"), std=model.model_args.get("std"),
        default_route=model.default_route, dual_bn=model.dual_bn, repo_hint=facts.get("repo_id", "<your-org>/<model-name>"),
        attack_steps=a.steps, eps=_pixels(a.eps), alpha=_pixels(a.alpha), random_start=a.random_start,
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size,
        warmup_epochs=t.warmup_epochs, epochs=t.epochs, seed=t.seed,
        num_train_images=facts.get("num_train_images"), num_val_images=facts.get("num_val_images"),
        hardware=facts.get("hardware", "unknown"), wall_time=facts.get("wall_time", "unknown"),
        final_loss=facts.get("final_loss", "n/a"), loss_plot=facts.get("loss_plot"),
        evaluation=facts.get("evaluation") or "Not evaluated yet: run `robust-hub eval` on this model and its results are added here.",
        versions=", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown",
    )
    return str(ModelCard.from_template(card_data, template_path=str(template_path()), **values))


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
