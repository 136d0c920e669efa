"""sparsezip: visual-token compression for LLaVA-style vision-language models.

Import-light: this imports torch and the method registry only (no transformers, no I/O).

    from sparsezip import VisionContext, get_method
    res = get_method("visionzip", dominant=54, contextual=10)(VisionContext(hidden=X, keys=Kk, cls_attn=A))
"""

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods import CompressionMethod, get_method, list_methods, register_method

__all__ = [
    "CompressionMethod",
    "CompressionResult",
    "VisionContext",
    "get_method",
    "list_methods",
    "register_method",
]
__version__ = "0.1.0"
