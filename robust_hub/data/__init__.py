"""Image data for robust pre-training: in-memory datasets and batched SimCLR augmentation.

``load_image_dataset`` reads ``embedded:digits`` (offline, the default), a Hugging Face Hub
dataset id, or a local folder of parquet/arrow shards or images into an ``ImageDataset``;
``SimCLRAugment`` augments whole batches on their device.
"""

from robust_hub.data.augment import SimCLRAugment
from robust_hub.data.datasets import DEFAULT_DATASET, ImageDataset, load_image_dataset

__all__ = ["DEFAULT_DATASET", "ImageDataset", "SimCLRAugment", "load_image_dataset"]
