"""A standalone yes/no probe of the tiny LLaVA, with optional patch selection before the projector.

This is the training recipe's own measuring stick (model-card accuracy, and "does CLS-attention top-k beat
random at equal token count" while tuning the task), independent of the suite's adapter and runner: it
takes the layer -2 features and the CLS attention row from the adapter's tower tap, keeps ``k`` patches per image (raster
order), projects them and runs the language model on the evaluation prompt with exactly ``k`` image tokens.
The answer is the greedy first token (what ``generate`` emits first), read with POPE's official parser.
The suite's real numbers come from ``sparsezip eval`` through the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image

from sparsezip.adapters.vision_tower import FeatureLayerTap
from sparsezip.data.registry import load_dataset
from sparsezip.embedded.tokens import PromptTokens
from sparsezip.imageprep import prepare_images
from sparsezip.metrics import parse_pope_answer, pope_metrics

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

Selection = Literal["all", "cls_topk", "random"]


def keep_indices(
    selection: Selection, k: int, cls_attn: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Patch indices to keep, ascending: ``cls_attn: [B, P]`` (head-mean CLS attention over patches) ->
    ``[B, k]``. ``cls_topk`` = the ``k`` most attended patches; ``random`` = ``k`` uniform patches."""
    b, p = cls_attn.shape
    if not 0 < k <= p:
        raise ValueError(f"k must be in 1..{p}, got {k}")
    if selection == "all":
        return torch.arange(p).expand(b, p)
    if selection == "cls_topk":
        return cls_attn.topk(k, dim=-1).indices.sort(dim=-1).values
    if selection == "random":
        noise = torch.rand(b, p, generator=generator)
        return noise.topk(k, dim=-1).indices.sort(dim=-1).values
    raise ValueError(f"unknown selection {selection!r}")


@torch.no_grad()
def answer_yes(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    selection: Selection = "all",
    k: int | None = None,
    dataset: str = "pope",
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """``[B]`` bool: whether the greedy first answer token reads as "yes" under POPE's rule."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    prepared = prepare_images(images, processor.image_processor, pad=True)  # as the adapter (LLaVA-1.5 protocol)
    pixels = processor.image_processor(prepared, return_tensors="pt")["pixel_values"]
    features = FeatureLayerTap(model.model.vision_tower, model.config.vision_feature_layer)(pixels)
    hidden, attn = features.hidden, features.cls_attn.mean(1)[:, 1:]
    keep = keep_indices(selection, k or attn.shape[1], attn, generator)
    visual = model.model.multi_modal_projector(hidden[:, 1:].gather(1, keep.unsqueeze(-1).expand(
        -1, -1, hidden.shape[-1])))
    prompts = PromptTokens.build(processor)
    lm = model.model.language_model
    embed = lm.get_input_embeddings()
    head = embed(prompts.prefix[: int(prompts.image_positions[0])])
    rows = []
    for b, question in enumerate(questions):
        suffix, _ = prompts.suffix(dataset, question, None)
        rows.append(torch.cat([head, visual[b], embed(torch.tensor(suffix))]))
    width = max(len(r) for r in rows)
    embeds = torch.zeros(len(rows), width, head.shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        embeds[b, : len(row)] = row
        mask[b, : len(row)] = 1
    hidden_text = lm(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    last = hidden_text[torch.arange(len(rows)), mask.sum(1) - 1]
    tokens = model.lm_head(last).argmax(-1).tolist()
    return np.array([parse_pope_answer(processor.tokenizer.decode([t])) == "yes" for t in tokens])


def pope_probe(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    root: str | Path,
    setting: str,
    *,
    selection: Selection = "all",
    k: int | None = None,
    seed: int = 0,
    batch: int = 64,
    limit: int | None = None,
) -> dict:
    """POPE metrics (:func:`sparsezip.metrics.pope_metrics`) of the probe on the ``setting`` label file of
    the data root ``root``, read by the suite's POPE loader; the first ``limit`` questions if given."""
    samples = list(islice(load_dataset(f"pope-{setting}", Path(root) / "pope"), limit))
    generator = torch.Generator().manual_seed(seed)
    predicted = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        predicted += answer_yes(model, processor, [s.load_image() for s in chunk], [s.question for s in chunk],
                                selection=selection, k=k, generator=generator).tolist()
    return pope_metrics(["Yes" if p else "No" for p in predicted], [s.answers[0] for s in samples])


def pope_table(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, root: str | Path
) -> dict[str, dict]:
    """All visual tokens, every synthetic POPE setting: ``{setting: metrics}``."""
    return {s: pope_probe(model, processor, root, s) for s in ("random", "popular", "adversarial")}


def compression_table(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    root: str | Path,
    setting: str = "adversarial",
    fractions: Sequence[int] = (2, 4, 8),
    seed: int = 0,
) -> list[dict]:
    """CLS-attention top-k vs random patches at 1/f of the patches on one POPE setting: one row each."""
    num_patches = model.config.vision_config.image_size // model.config.vision_config.patch_size
    rows = []
    for f in fractions:
        k = num_patches**2 // f
        for selection in ("cls_topk", "random"):
            metrics = pope_probe(model, processor, root, setting, selection=selection, k=k, seed=seed)
            rows.append({"fraction": f"1/{f}", "k": k, "selection": selection, **metrics})
    return rows
