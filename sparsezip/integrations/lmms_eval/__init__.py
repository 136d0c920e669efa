"""sparsezip as an lmms-eval model (``--model sparsezip``), plus an offline task on the embedded POPE.

lmms-eval finds the model through the ``lmms_eval.models`` entry point declared in ``pyproject.toml``
(:mod:`.plugin`); nothing of lmms-eval is patched. Importing this package does not import lmms-eval:
:mod:`.requests` (prompts, generation settings, batching, cost summaries) is plain Python, and only
:mod:`.model` needs lmms-eval installed.

Tasks: lmms-eval's own tasks (``--tasks pope``, ``mme``, ...) need no help; the embedded synthetic POPE
(``sparsezip_pope_random|popular|adversarial``, tag ``sparsezip_pope``) lives in :data:`TASKS_DIR`, passed to
lmms-eval as ``--include_path`` (``python -m sparsezip.integrations.lmms_eval`` prints it).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_NAME = "sparsezip"
# The lmms-eval releases this bridge was tested with (it uses the entry-point manifest, GenerationResult and
# TokenCounts of the 0.7 line, and the task's request tuple layout).
LMMS_EVAL_REQUIREMENT = "lmms-eval>=0.7.3,<0.8"

__all__ = ["LMMS_EVAL_REQUIREMENT", "MODEL_NAME", "TASKS_DIR"]
