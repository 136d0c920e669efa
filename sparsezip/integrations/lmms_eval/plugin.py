"""The ``lmms_eval.models`` entry point: lmms-eval calls :func:`manifest` when it builds its model registry.

Declared in ``pyproject.toml`` (``[project.entry-points."lmms_eval.models"]``), so installing sparsezip is all
it takes for ``lmms-eval --model sparsezip`` to resolve; lmms-eval imports the class only when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsezip.integrations.lmms_eval import MODEL_NAME

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

MODEL_CLASS_PATH = "sparsezip.integrations.lmms_eval.model.SparseZipLMM"


def manifest() -> ModelManifest:
    """The registration payload: model id ``sparsezip`` -> :class:`~.model.SparseZipLMM` (a "simple"
    model: it receives lmms-eval's text contexts and builds its own LLaVA-1.5 prompts)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)
