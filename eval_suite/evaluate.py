"""Evaluate any backbone: the same code as ``robust-hub eval``.

    python eval_suite/evaluate.py MODEL --protocols slf,alf,aff --dataset cifar10 --out results/
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
