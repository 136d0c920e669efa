"""Dynamic-K calibration on real images: SparseZip's ``dynk.c`` / ``dynk.scale`` chosen on a model's vision
contexts so the mean K over a sample of a dataset hits a target (methods.md 1.3). The tensor-level fit is
``sparsezip.methods.sparsezip.dynamic_k.calibrate_dynamic_k``; this module feeds it images through a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsezip.adapters.api import VisionLanguageModel
    from sparsezip.data.sample import Sample
    from sparsezip.methods.sparsezip import SparseZip
    from sparsezip.methods.sparsezip.dynamic_k import DynamicKCalibration


def calibrate_on_samples(
    method: SparseZip, model: VisionLanguageModel, samples: Sequence[Sample], family: str,
    target_mean_k: float | None = None,
) -> DynamicKCalibration:
    """Calibrate SparseZip ``method``'s dynamic K on ``samples`` (their images, and their questions for the
    text term, phrased as dataset ``family`` asks them) so the mean K hits ``target_mean_k`` (default: the
    dominant tokens ``method`` keeps at its budget). Needs a model with ``vision_contexts`` (one context per
    image shape: Qwen2.5-VL) or ``vision_context`` (one for all images: LLaVA); a model that declares a
    ``dynamic_k_refusal`` (LLaVA-NeXT) is refused with it.
    """
    from sparsezip.data.prompts import dataset_question

    if not samples:
        raise ValueError("dynamic-K calibration needs at least one sample, got none")
    if not hasattr(method, "calibrate"):
        raise ValueError(f"method {method.name!r} has no dynamic K to calibrate (use sparsezip)")
    refusal = getattr(model, "dynamic_k_refusal", None)
    if refusal:
        raise ValueError(f"model {model.name!r}: {refusal}")
    if not hasattr(model, "vision_context") and not hasattr(model, "vision_contexts"):
        raise ValueError(f"model {model.name!r} cannot hand out vision contexts (no vision_context method)")
    images = [s.load_image() for s in samples]
    questions = [dataset_question(family, s.question) for s in samples] if method.needs_text else None
    if hasattr(model, "vision_contexts"):
        return method.calibrate(model.vision_contexts(images, questions=questions), target_mean_k)
    return method.calibrate([model.vision_context(images, questions=questions)], target_mean_k)
