"""The evaluation suite: SLF, ALF and AFF finetuning with clean, PGD-20, AutoAttack and CIFAR-10-C
accuracy for any backbone, written as versioned, resumable JSON records."""

from robust_hub.evaluation.attacks import PGDConfig, pgd, trades_attack, trades_loss
from robust_hub.evaluation.autoattack_runner import AutoAttackResult, run_autoattack
from robust_hub.evaluation.corruptions import (CIFAR10C_CORRUPTIONS, GENERATED_CORRUPTIONS, corruption_accuracy,
                                               generate_corruption_set, load_cifar10c, save_corruption_set)
from robust_hub.evaluation.loading import EvalBackbone, ModelInfo, load_backbone, wrap_module
from robust_hub.evaluation.protocols import Classifier, ProtocolConfig, default_protocol_config, finetune, with_overrides
from robust_hub.evaluation.records import SCHEMA_VERSION, EvalRecord, load_records, read_record, write_record
from robust_hub.evaluation.runner import SplitData, accuracy, evaluate, format_table, pgd_accuracy

__all__ = [
    "AutoAttackResult", "CIFAR10C_CORRUPTIONS", "Classifier", "EvalBackbone", "EvalRecord", "GENERATED_CORRUPTIONS",
    "ModelInfo", "PGDConfig", "ProtocolConfig", "SCHEMA_VERSION", "SplitData", "accuracy", "corruption_accuracy",
    "default_protocol_config", "evaluate", "finetune", "format_table", "generate_corruption_set", "load_backbone",
    "load_cifar10c", "load_records", "pgd", "pgd_accuracy", "read_record", "run_autoattack", "save_corruption_set",
    "trades_attack", "trades_loss", "with_overrides", "wrap_module", "write_record",
]
