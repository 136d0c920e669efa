"""Replaying the stored golden cases of in-LLM methods (``fixtures/golden/<method>/small.safetensors``) through our
layer-wise loop: the tiny random Llama the authors' code ran on (its weights under HF names), its input rows, and
what a run of ours gives back to compare (kept positions per stage, cache lengths, greedy tokens, step logits).

Only data comes from upstream (see each folder's ``SOURCE.md``); this module builds the HF model from it and
drives :func:`sparsezip.adapters.layerwise.generate_layerwise`, the same loop the adapters use.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sparsezip.adapters.layerwise import LayerwiseGeneration, generate_layerwise
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState

WEIGHTS_PREFIX = "weights."


@dataclass(frozen=True)
class GoldenCase:
    """A golden file: its tensors (without the weights), the case metadata and the model they ran on."""

    tensors: dict[str, torch.Tensor]
    meta: dict
    model: torch.nn.Module

    def rows(self) -> list[torch.Tensor]:
        """The stored input rows, ``[S, D]`` each (the LLM's input embeddings)."""
        return [self.tensors[f"inputs.row{r}.inputs_embeds"] for r in range(len(self.meta["input_seeds"]))]


@dataclass(frozen=True)
class GoldenRun:
    """What our loop did on golden rows.

    Attributes:
        generation: the loop's result.
        kept_positions: ``[stage][row]`` original (unpadded) positions of the visual tokens kept at each pruning
            layer, ascending.
        step_logits: ``[B, T, V]`` the logits of the prefill and of every decode step.
        inspected: what ``inspect(layer_index, state)`` returned at each pruning layer.
    """

    generation: LayerwiseGeneration
    kept_positions: list[list[torch.Tensor]]
    step_logits: torch.Tensor
    inspected: list[object]


def load_golden(path: Path) -> GoldenCase:
    """The golden file at ``path`` with its tiny Llama built (transformers' ``LlamaForCausalLM``, SDPA, float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with safe_open(str(path), "pt") as handle:
        meta = json.loads((handle.metadata() or {})["case"])
    everything = load_file(str(path))
    weights = {k[len(WEIGHTS_PREFIX):]: v for k, v in everything.items() if k.startswith(WEIGHTS_PREFIX)}
    model = LlamaForCausalLM(LlamaConfig(**meta["config"])).eval()
    model.load_state_dict(weights, strict=True)
    tensors = {k: v for k, v in everything.items() if not k.startswith(WEIGHTS_PREFIX)}
    return GoldenCase(tensors=tensors, meta=meta, model=model)


def run_golden(case: GoldenCase, rows: list[torch.Tensor], method: LayerPruner, *, pad: int = 0,
               new_tokens: int = 7, inspect: Callable[[int, LayerState], object] | None = None) -> GoldenRun:
    """Run ``method`` on ``rows`` (``[S, D]`` each, the case's layout) batched, every row left-padded by ``pad``
    zero embeddings, greedy for ``new_tokens`` (no EOS), recording what each pruning layer kept (and what
    ``inspect`` makes of each pruning layer's state)."""
    vis_start, vis_len = case.meta["vis_start"], case.meta["vis_len"]
    embeds = torch.stack(rows)
    b, s, d = embeds.shape
    embeds = torch.cat([embeds.new_zeros(b, pad, d), embeds], dim=1)
    mask = torch.cat([torch.zeros(b, pad, dtype=torch.long), torch.ones(b, s, dtype=torch.long)], dim=1)
    visual = torch.zeros(b, pad + s, dtype=torch.bool)
    visual[:, pad + vis_start: pad + vis_start + vis_len] = True

    decisions: list[tuple[torch.Tensor, torch.Tensor]] = []
    inspected: list[object] = []
    prune = method.prune

    def recording(layer_index: int, state: LayerState) -> LayerDecision:
        if inspect is not None:
            inspected.append(inspect(layer_index, state))
        decision = prune(layer_index, state)
        decisions.append((state.visual_index, decision.keep))
        return decision

    logits: list[torch.Tensor] = []
    hook = case.model.lm_head.register_forward_hook(lambda module, args, out: logits.append(out[:, -1].float()))
    method.prune = recording
    try:
        generation = generate_layerwise(
            case.model.model, case.model.lm_head, embeds, mask, visual, method, num_patches=vis_len,
            max_new_tokens=new_tokens, eos_token_ids=set(), clock=time.perf_counter)
    finally:
        hook.remove()
        del method.prune
    # Stage 0's visual tokens are the image at its original positions; every later stage's are the survivors of
    # the one before, in order (whatever the position policy renumbered them to).
    original = torch.arange(vis_start, vis_start + vis_len).expand(b, vis_len)
    kept_positions = []
    for visual_index, keep in decisions:
        if visual_index.shape[1] != original.shape[1]:
            raise ValueError("a stage's visual tokens are not the previous stage's survivors")
        stage = [original[r][keep[r]] for r in range(b)]
        kept_positions.append(stage)
        width = max(len(p) for p in stage)
        original = torch.stack([torch.cat([p, p.new_full((width - len(p),), -1)]) for p in stage])
    return GoldenRun(generation, kept_positions, torch.stack(logits, dim=1), inspected)
