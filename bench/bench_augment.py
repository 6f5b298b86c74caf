"""Images per second of SimCLRAugment (batched, kornia) against torchvision's per-image v2 pipeline.

Both run in this process on the same images (the embedded digits, tiled to one batch):
torchvision on CPU one image at a time on one thread, as a DataLoader worker would, and
SimCLRAugment on the whole batch on CPU and, when there is one, on CUDA.

    python bench/bench_augment.py [--batch-size 512] [--size 32] [--strength 1.0] [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2


from robust_hub.data import DEFAULT_DATASET, SimCLRAugment, load_image_dataset


def torchvision_pipeline(strength: float, size: int) -> v2.Compose:
    """The same augmentation as SimCLRAugment, written with torchvision's per-image transforms."""
    s = strength
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(1 - 0.9 * s, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)], p=0.8 * s),
            v2.RandomGrayscale(0.2 * s),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def images_per_second(run: Callable[[], object], batch_size: int, repeats: int, sync: Callable[[], None]) -> float:
    """Median throughput of ``run`` over ``repeats`` timed calls, after one warm-up call."""
    run()
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        seconds.append(time.perf_counter() - start)
    return batch_size / statistics.median(seconds)


def benchmark_batch(batch_size: int, size: int) -> torch.Tensor:
    """Real images (the embedded digits at ``size``), repeated to ``batch_size``."""
    digits = load_image_dataset(DEFAULT_DATASET, image_size=size).images
    repeats = -(-batch_size // len(digits))
    return digits.repeat(repeats, 1, 1, 1)[:batch_size].contiguous()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = benchmark_batch(args.batch_size, args.size)
    reference = torchvision_pipeline(args.strength, args.size)
    ours = SimCLRAugment(args.strength, args.size)

    def no_sync() -> None:
        return None

    def rate(run: Callable[[], object], sync: Callable[[], None] = no_sync) -> float:
        return images_per_second(run, len(batch), args.repeats, sync)

    # Per-image transforms run single-threaded, as in a DataLoader worker; more intra-op
    # threads only slow tensors this small down, so this is torchvision's best case.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    baseline = rate(lambda: torch.stack([reference(img) for img in batch]))
    torch.set_num_threads(threads)
    rows = [("cpu", "torchvision v2, per image, 1 thread", baseline)]
    rows.append(("cpu", "SimCLRAugment, batched", rate(lambda: ours(batch))))
    if torch.cuda.is_available():
        on_gpu = batch.cuda()
        rows.append(("cuda", "SimCLRAugment, batched", rate(lambda: ours(on_gpu), torch.cuda.synchronize)))
    print(
        f"batch {len(batch)} x 3x{args.size}x{args.size}, strength {args.strength}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'device':<7}{'pipeline':<36}{'images/s':>12}{'vs torchvision':>16}")
    for device, name, speed in rows:
        print(f"{device:<7}{name:<36}{speed:>12,.0f}{speed / baseline:>15.2f}x")


if __name__ == "__main__":
    main()
