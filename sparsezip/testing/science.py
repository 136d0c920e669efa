"""The order the science requires, as a check any embedded family can be put through: at 1/4 of the visual
tokens, ``none >= visionzip > random + margin`` on synthetic POPE adversarial F1, through the real adapter.

Shared by ``tests/test_science_order.py`` (the embedded default, every ``pytest``) and
``benchmarks/test_family_science_order.py`` (every embedded family, with the benchmark suite).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from sparsezip.adapters.api import VisionLanguageModel
from sparsezip.data.prompts import build_prompt
from sparsezip.data.registry import load_dataset
from sparsezip.methods import get_method
from sparsezip.metrics import pope_metrics

MARGIN = 0.05  # F1 points visionzip must lead random by
ORDERED_METHODS = ("none", "visionzip", "random")


def pope_f1_at_quarter_budget(model: VisionLanguageModel, pope_root: Path, questions: int,
                              batch: int = 40) -> dict[str, float]:
    """POPE-adversarial F1 of ``none`` and, at ``model.nominal_visual_tokens // 4`` tokens, of ``visionzip`` and
    ``random``, on the first ``questions`` of the split under ``pope_root``. Raises ``ValueError`` when
    ``questions`` is not positive or a vision-side method does not keep exactly the budget."""
    if questions <= 0:
        raise ValueError(f"questions must be positive, got {questions}")
    samples = list(islice(load_dataset("pope-adversarial", pope_root), questions))
    images = [s.load_image() for s in samples]
    prompts = [build_prompt("pope", s.question) for s in samples]
    labels = [s.answers[0] for s in samples]
    budget = model.nominal_visual_tokens // 4
    f1 = {}
    for name in ORDERED_METHODS:
        method = get_method(name) if name == "none" else get_method(name, budget=budget)
        outputs = [out for i in range(0, len(samples), batch)
                   for out in model.generate(images[i:i + batch], prompts[i:i + batch], method=method,
                                             max_new_tokens=4)]
        if name != "none" and {o.visual_tokens for o in outputs} != {float(budget)}:
            raise ValueError(f"{name} kept {sorted({o.visual_tokens for o in outputs})} tokens, not {budget}")
        f1[name] = pope_metrics([o.text for o in outputs], labels)["f1"]
    return f1


def is_ordered(f1: dict[str, float], margin: float = MARGIN) -> bool:
    """``none >= visionzip > random + margin`` (F1 from :func:`pope_f1_at_quarter_budget`)."""
    return f1["none"] >= f1["visionzip"] > f1["random"] + margin
