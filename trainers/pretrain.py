"""Pre-train a robust backbone.

    accelerate launch trainers/pretrain.py --config configs/acl_cifar10.yaml [section.key=value ...]
    accelerate launch trainers/pretrain.py --config ... --resume            # continue the latest checkpoint

Works on one CPU, one GPU or several (``accelerate launch --num_processes N``).
"""

import argparse
import sys

from robust_hub.cli import OneLineParser, add_pretrain_arguments, run_pretrain_command, run_with_errors


def main() -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pretrain_arguments(parser)
    return run_with_errors(run_pretrain_command, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
