"""Method registry. Importing this package registers every built-in method (and does nothing else)."""

from sparsezip.methods import (
    cdpruner,  # noqa: F401  (registration side effect, one line per method)
    dart,  # noqa: F401
    divprune,  # noqa: F401
    fastv,  # noqa: F401
    none,  # noqa: F401
    pdrop,  # noqa: F401
    pool,  # noqa: F401
    prumerge_plus,  # noqa: F401
    random_select,  # noqa: F401
    sparsevlm,  # noqa: F401
    sparsezip,  # noqa: F401
    tome,  # noqa: F401
    visionzip,  # noqa: F401
    vispruner,  # noqa: F401
)
from sparsezip.methods.base import (
    CompressionMethod,
    get_method,
    list_methods,
    method_class,
    register_method,
    unregister_method,
)
from sparsezip.methods.rows import Ablation, BenchmarkRows

__all__ = [
    "Ablation",
    "BenchmarkRows",
    "CompressionMethod",
    "get_method",
    "list_methods",
    "method_class",
    "register_method",
    "unregister_method",
]
