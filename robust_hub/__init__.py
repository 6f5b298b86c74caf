"""robust-hub: adversarially robust self-supervised pre-training on the Hugging Face stack.

Importing the package registers its backbones in timm's registry, so ``timm.create_model`` and
``transformers.AutoModel`` can rebuild saved robust-hub models without remote code.
"""

from robust_hub.errors import RobustHubError
from robust_hub.models import RobustBackbone, create_backbone, list_backbones
from robust_hub.models.hub import from_pretrained

__version__ = "0.1.0"
__all__ = ["RobustBackbone", "RobustHubError", "__version__", "create_backbone", "from_pretrained", "list_backbones"]
