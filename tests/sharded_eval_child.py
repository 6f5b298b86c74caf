"""One small evaluation, run by test_eval_sharded.py as a plain process or under ``accelerate launch``.

    sharded_eval_child.py OUT_DIR MEASURED.safetensors [KEY=VALUE ...]

Every per-image result the runner measured (clean, PGD-20, AutoAttack, eps curve, CIFAR-10-C, and the adversarial
examples) is written by the main process to MEASURED.safetensors, one tensor per result. Test hooks, through the
environment: ``COUNT_FILE`` gets a line ``<attack> <images> <rank>`` for each AutoAttack chunk and PGD batch a
process attacks; ``KILL_AFTER_CHUNKS=K`` ends a process abruptly when it is about to attack its (K+1)-th chunk,
as a killed run would stop.
"""

from __future__ import annotations

import ast
import os
import sys

import torch
from test_eval_helpers import TinyBackbone, synthetic_split

import robust_hub.evaluation.autoattack_runner as aar
import robust_hub.evaluation.runner as runner
from robust_hub.evaluation import sharding

OPTIONS = dict(protocols="slf", metrics="clean,pgd20,autoattack,c10c", c10c_generate=True, c10c_n_per_severity=5,
               eps=6 / 255, eps_curve=(3 / 255,), n_test=10, n_autoattack=6, batch_size=3, autoattack_chunk_size=2,
               device="cpu",
               protocol_overrides={"epochs": 8, "batch_size": 16, "augment": False, "lr": 0.5},
               progress=False, print_table=False)
DATA = (synthetic_split(48, "train", 0), synthetic_split(10, "test", 1))


def flatten(measured: dict) -> dict[str, torch.Tensor]:
    """Each per-image result measured as a tensor, named by metric."""
    detail = {name: m.detail for name, m in measured.items()}
    out = {"clean.correct": torch.tensor(detail["clean"]["correct"])} if "clean" in detail else {}
    for metric, flags in (("pgd20", "correct"), ("autoattack", "robust")):
        if metric in detail:
            out[f"{metric}.{flags}"] = torch.tensor(detail[metric][flags])
            out[f"{metric}.indices"] = detail[metric]["adversarial"].indices
            out[f"{metric}.images"] = detail[metric]["adversarial"].images
    for key, adv in detail.get("eps_curve", {}).get("adversarial_curve", {}).items():
        out[f"eps_curve.{key}.robust"] = torch.tensor(detail["eps_curve"]["robust_curve"][key])
        out[f"eps_curve.{key}.indices"], out[f"eps_curve.{key}.images"] = adv.indices, adv.images
    for name, by_severity in detail.get("c10c", {}).get("correct", {}).items():
        for severity, correct in by_severity.items():
            out[f"c10c.{name}.{severity}"] = torch.tensor(correct)
    return {k: v.contiguous() for k, v in out.items()}


def _count(kind: str, n: int) -> None:
    if os.environ.get("COUNT_FILE"):
        with open(os.environ["COUNT_FILE"], "a") as f:
            f.write(f"{kind} {n} {sharding.rank()}\n")


def install_hooks(measured_path: str) -> None:
    from safetensors.torch import save_file

    real_decide, real_chunk, real_pgd = runner.decide, aar._attack_chunk, runner.pgd
    attacked = []

    def decide(measured, **kwargs):
        if sharding.is_main_process():
            save_file(flatten(measured), measured_path)
        return real_decide(measured, **kwargs)

    def attack_chunk(model, x, y, **kwargs):
        if len(attacked) == int(os.environ.get("KILL_AFTER_CHUNKS", "-1")):
            os._exit(9)  # no clean-up, no flushing: as a killed process stops
        _count("autoattack", len(x))
        attacked.append(len(x))
        return real_chunk(model, x, y, **kwargs)

    def pgd(model, x, y, cfg):
        _count(f"pgd{cfg.eps:.6g}", len(x))
        return real_pgd(model, x, y, cfg)

    runner.decide, aar._attack_chunk, runner.pgd = decide, attack_chunk, pgd


def main(out_dir: str, measured_path: str, *overrides: str) -> list[dict]:
    install_hooks(measured_path)
    options = {**OPTIONS, **{k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in overrides)}}
    return runner.evaluate(TinyBackbone(), dataset=DATA, out_dir=out_dir, **options)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
