"""How a training recipe reads in a model card (method names and settings, coreset use) and the loss plot.

The card itself is rendered by :mod:`robust_hub.model_card`, the one card module.
"""

from __future__ import annotations

from robust_hub.config import RunConfig

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


def split_text(config: RunConfig) -> str:
    """The split, and the subset of it when ``data.subset`` cut the run to the first N images."""
    d = config.data
    return d.split if d.subset is None else f"{d.split}, first {d.subset} images only (data.subset)"


SELECTION_VARIANTS = {("row_mean", "acl"): "the reference's selection (row-mean gains, plain ACL loss)"}


def coreset_line(config: RunConfig) -> str | None:
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
