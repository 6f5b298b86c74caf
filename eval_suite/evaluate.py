"""Evaluate a backbone: ``python eval_suite/evaluate.py MODEL --protocols slf,alf,aff --dataset cifar10 --out DIR``.

The same command as ``robust-hub eval``; see ``--help`` for every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robust_hub.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
