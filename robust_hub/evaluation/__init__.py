"""The evaluation suite: SLF, ALF and AFF finetuning with clean, PGD-20, AutoAttack and CIFAR-10-C
accuracy for any backbone, written as versioned, resumable JSON records.

The names below load on first use, so ``robust-hub eval --help`` answers without importing torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "attacks": ("PGDConfig", "pgd", "trades_attack", "trades_loss"),
    "autoattack_runner": ("AutoAttackResult", "run_autoattack"),
    "corruptions": ("CIFAR10C_CORRUPTIONS", "GENERATED_CORRUPTIONS", "corruption_accuracy", "generate_corruption_set",
                    "load_cifar10c", "save_corruption_set"),
    "loading": ("EvalBackbone", "ModelInfo", "load_backbone", "wrap_module"),
    "protocols": ("Classifier", "ProtocolConfig", "default_protocol_config", "finetune", "with_overrides"),
    "records": ("SCHEMA_VERSION", "EvalRecord", "load_records", "read_record", "write_record"),
    "runner": ("SplitData", "accuracy", "evaluate", "format_table", "pgd_accuracy"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
