"""Where robust-hub caches what it can rebuild (decoded images, downloaded corruption sets).

As the rest of the Hugging Face ecosystem does: ``$ROBUST_HUB_CACHE`` if set; else ``robust_hub`` under
``$HF_HOME`` if that is set (a machine that moved its Hugging Face cache to a big disk moves this one too);
else ``$XDG_CACHE_HOME/robust_hub``; else ``~/.cache/robust_hub``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The root of robust-hub's cache (``datasets/`` and ``corruptions/`` live under it)."""
    if os.environ.get("ROBUST_HUB_CACHE"):
        return Path(os.environ["ROBUST_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "robust_hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "robust_hub"
