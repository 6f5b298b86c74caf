"""Evaluate any backbone: the same code as ``robust-hub eval``.

    python eval_suite/evaluate.py MODEL --protocols slf,alf,aff --dataset cifar10 --out results/
    accelerate launch --multi_gpu --num_processes 8 eval_suite/evaluate.py MODEL ... --out results/   # 8 processes
"""

import argparse
import sys

from robust_hub.cli import run_with_errors
from robust_hub.evaluation.cli import add_eval_arguments, run_eval_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(parser)
    return run_with_errors(run_eval_command, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
