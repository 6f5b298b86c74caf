"""robust-hub: adversarially robust self-supervised pre-training on the Hugging Face stack.

Importing the package registers its backbones in timm's registry, so ``timm.create_model`` and
``transformers.AutoModel`` can rebuild saved robust-hub models without remote code.

The import itself is cheap (the command line answers ``--help`` without torch): the public names load on
first use, and the registration happens as soon as timm is imported, at once if it already is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

from robust_hub.errors import RobustHubError

__version__ = "0.1.0"
__all__ = ["RobustBackbone", "RobustHubError", "__version__", "create_backbone", "from_pretrained", "list_backbones"]

_LAZY = {"RobustBackbone": "robust_hub.models", "create_backbone": "robust_hub.models",
         "list_backbones": "robust_hub.models", "from_pretrained": "robust_hub.models.hub"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robust_hub' has no attribute {name!r}")


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Wraps timm's loader so that robust-hub's architectures are registered right after timm executes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "timm":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, finder: _RegisterWithTimm):
        self.loader, self.finder = loader, finder

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        self.loader.exec_module(module)
        importlib.import_module("robust_hub.models.registry")

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)


if "timm" in sys.modules:
    importlib.import_module("robust_hub.models.registry")
elif not any(isinstance(finder, _RegisterWithTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
