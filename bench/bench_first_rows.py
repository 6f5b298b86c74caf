"""Time and memory of loading a training split for ``--n-train N``: the whole split, then ``head(N)``
(as evaluation did before), against decoding only the first N (``load_split(..., n=N)``).

Each variant runs in a fresh child process (so peak RSS is its own), with an empty decode cache
(cold) and then with the whole split's decode cached (warm, after one full load). Ratios are
against the whole-split load of the same run.

    python bench/bench_first_rows.py [--data ../shared/data/cifar10] [--split train] [--n 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path


def _load(queue: multiprocessing.Queue, data: str, split: str, n: int, partial: bool, cache: str) -> None:
    os.environ["ROBUST_HUB_CACHE"] = cache
    from robust_hub.evaluation.runner import load_split

    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    loaded = load_split(data, split, n=n) if partial else load_split(data, split).head(n)
    seconds = time.perf_counter() - t0
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) / 1024  # Linux: KiB
    held_mib = loaded.images.untyped_storage().nbytes() / 2**20  # head(n) of a whole load is a view of it all
    queue.put((seconds, peak_mib, held_mib, loaded.fingerprint, loaded.whole_size))


def measure(data: str, split: str, n: int, partial: bool, cache: str) -> tuple[float, float, float, str, int]:
    """(seconds, peak RSS growth MiB, MiB of images held, fingerprint, split size) in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_load, args=(queue, data, split, n, partial, cache))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cold_a, tempfile.TemporaryDirectory() as cold_b:
        rows = {
            "whole split, cold": measure(args.data, args.split, args.n, False, cold_a),
            f"first {args.n}, cold": measure(args.data, args.split, args.n, True, cold_b),
            "whole split, warm": measure(args.data, args.split, args.n, False, cold_a),
            f"first {args.n}, warm": measure(args.data, args.split, args.n, True, cold_a),
        }
    fingerprints = {r[3] for r in rows.values()}
    size = next(iter(rows.values()))[4]
    print(f"{args.data} [{args.split}], {size} images; one fingerprint: {len(fingerprints) == 1}")
    print(f"{'variant':<22} {'seconds':>8} {'peak RSS MiB':>13} {'held MiB':>9}")
    for name, (seconds, peak, held, _, _) in rows.items():
        print(f"{name:<22} {seconds:8.2f} {peak:13.1f} {held:9.2f}")
    for temp in ("cold", "warm"):
        whole, first = rows[f"whole split, {temp}"], rows[f"first {args.n}, {temp}"]
        time_ratio, rss_ratio = first[0] / whole[0], first[1] / max(whole[1], 1e-9)
        print(f"{temp}: first {args.n} takes {time_ratio:.3f}x the time, {rss_ratio:.3f}x the peak RSS growth "
              "of the whole split")


if __name__ == "__main__":
    main()
