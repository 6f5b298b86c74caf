"""Bad input found by the first process while another waits in ``main_first``: the waiting process leaves with
the same RobustHubError, and only after the failing process has reported it (2 real gloo processes)."""

import os
import socket
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from robust_hub.errors import RobustHubError
from robust_hub.evaluation import sharding

MESSAGE = "dataset path /data/absent does not exist."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")

    def load():
        if rank == 0:
            raise RobustHubError(MESSAGE)
        results["loaded_by_1"] = True
        return "data"

    try:
        sharding.main_first(load)
        results[rank] = ("returned", "")
    except RobustHubError as error:
        results[rank] = ("RobustHubError", str(error))
        if rank == 0:  # as the entry point does: report, then release whoever waits for the report
            time.sleep(1.0)
            results["1_left_before_the_report"] = 1 in results
            if error.after_report:
                error.after_report()
    except Exception as error:  # noqa: BLE001 - what the waiting process died of is the finding
        results[rank] = (type(error).__name__, str(error)[:300])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_the_waiting_process_leaves_with_the_first_processes_error_after_its_report():
    results = mp.Manager().dict()
    context = mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"main_first hung: {dict(results)}")
    assert results[0] == ("RobustHubError", MESSAGE)
    assert results[1] == ("RobustHubError", MESSAGE)
    assert "loaded_by_1" not in results  # the data is not loaded after the first process found it bad
    assert results["1_left_before_the_report"] is False


def test_a_single_process_raises_the_error_with_nothing_to_release(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def load():
        raise RobustHubError(MESSAGE)

    try:
        sharding.main_first(load)
    except RobustHubError as error:
        assert str(error) == MESSAGE and error.after_report is None
    else:
        raise AssertionError("main_first swallowed the error")


def test_the_entry_point_releases_the_others_after_it_printed_the_error(monkeypatch, capsys):
    from argparse import Namespace

    from robust_hub.cli import run_with_errors

    monkeypatch.setenv("RANK", "0")
    printed_before_release = []

    def run(args):
        error = RobustHubError(MESSAGE)
        error.after_report = lambda: printed_before_release.append(capsys.readouterr().err)
        raise error

    assert run_with_errors(run, Namespace()) == 2
    assert printed_before_release == [f"error: {MESSAGE}\n"]
