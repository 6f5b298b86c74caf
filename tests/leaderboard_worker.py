"""One leaderboard runner process for the concurrency tests: the real queue and store, a stand-in evaluation.

usage: python leaderboard_worker.py STORE LOG EVAL_SECONDS LEASE_SECONDS [--reclaim] [--wait-for PATH]

With ``--wait-for`` the process starts (imports take long on a busy machine) and then waits until PATH exists
before it runs the queue, so that a test decides when it looks at the queue. The evaluation sleeps EVAL_SECONDS and returns a schema-valid record of the requested commit; every start is
appended to LOG as ``start MODEL COMMIT PID`` so that a test counts how often each request was evaluated. The
summary of the run is printed as JSON.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import robust_hub.evaluation.runner as evaluation_runner  # noqa: E402
import robust_hub.leaderboard.runner as leaderboard_runner  # noqa: E402
from robust_hub.leaderboard.store import open_store  # noqa: E402

from leaderboard_helpers import KEY, record  # noqa: E402


def main(store: str, log: str, eval_seconds: str, lease_seconds: str, *flags: str) -> None:
    if "--wait-for" in flags:
        go = Path(flags[flags.index("--wait-for") + 1])
        while not go.exists():
            time.sleep(0.05)

    def evaluate(model_id, revision, **_):
        with open(log, "a") as handle:
            handle.write(f"start {model_id} {revision} {os.getpid()}\n")
        time.sleep(float(eval_seconds))
        return [record(model_id, revision)]

    evaluation_runner.evaluate = evaluate
    leaderboard_runner.inspect_model = lambda model_id, revision: (revision, {})
    leaderboard_runner._self_reported = lambda model_id, commit: []
    summary = leaderboard_runner.run_queue(open_store(store), KEY, leaderboard_runner.EvalSettings(), "work",
                                           lease_s=float(lease_seconds), reclaim="--reclaim" in flags)
    print(json.dumps(dataclasses.asdict(summary)))


if __name__ == "__main__":
    main(*sys.argv[1:])
