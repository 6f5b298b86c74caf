"""Supervised adversarial training (PGD-AT or TRADES), optionally on an RCS coreset.

    accelerate launch trainers/sat.py --config configs/sat_cifar10.yaml [section.key=value ...]
    accelerate launch trainers/sat.py --config ... coreset.mode=rcs coreset.fraction=0.2
    accelerate launch trainers/sat.py --config ... --resume            # continue the latest checkpoint

Shares the loop, data layer and checkpoints with pre-training; writes a classifier in the Hugging Face
format that `robust-hub eval MODEL --protocols own` scores as it is.
"""

import argparse
import sys

from robust_hub.cli import add_pretrain_arguments, run_sat_command, run_with_errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pretrain_arguments(parser, examples=None)
    return run_with_errors(run_sat_command, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
