"""Position ids in the layer-wise loop (:mod:`sparsezip.adapters.layerwise`), for 1-D RoPE decoders (Llama,
Mistral: LLaVA-1.5, LLaVA-NeXT) and M-RoPE ones (Qwen2.5-VL: every token has a (temporal, height, width) id; text
has all three equal, an image's tokens their grid cell offset by where the image starts).

Two ids per token travel through the loop: ``text`` ``[B, S]``, the 1-D sequence position (what
``LayerState.positions`` holds and what the decoder layers' ``position_ids`` argument receives), and ``rope``,
what the rotary embedding turns into angles: the same ``[B, S]`` tensor for 1-D RoPE, ``[3, B, S]`` for M-RoPE.

What an in-LLM method's ``position_policy`` means for each:

* ``"original"``: survivors keep both ids; a decoded token continues the unpruned numbering. 1-D and M-RoPE
  alike; for M-RoPE that is what HF generation does (the next token is one past the largest id), and what the
  vision-side Qwen path does (:mod:`sparsezip.adapters.qwen_sequence`).
* ``"renumber"``: the model's own position rule applied to the surviving sequence. For 1-D RoPE that rule is
  "one more than the previous token": survivors are numbered ``0, 1, 2, ...`` (SparseVLM v1.5, PyramidDrop).
  For M-RoPE it is ``get_rope_index``'s: text advances by one, an image's tokens sit at their grid cells from
  the image's start, and the text after an image starts one past the image's largest id. On a pruned image the
  surviving visual tokens keep their grid cells (a sparse grid: the (h, w) layout is what M-RoPE encodes, and
  dropping tokens leaves no gap in it to close), tokens without a cell (merged tokens an in-LLM method inserts)
  advance like text after them, and the text after the image starts one past the largest surviving id -- so it
  moves up only when a whole last row or column of the image was dropped. Tokens before the image never change.
  (Upstream SparseVLM and PyramidDrop exist for LLaVA only; this is our definition, tested in
  ``tests/test_layerwise_families.py``.)

Decoding, both policies and both kinds: a decoded token's id in layer ``l`` is one past the largest id in
layer ``l``'s cache (all three axes for M-RoPE). For 1-D ``renumber`` that is the layer's cache length, for
``original`` the unpruned continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Positions:
    """Position ids of a left-padded sequence (module docstring): ``text [B, S]`` int64 and ``rope``, ``[B, S]``
    (1-D RoPE: the same tensor) or ``[3, B, S]`` (M-RoPE)."""

    text: torch.Tensor
    rope: torch.Tensor

    @property
    def mrope(self) -> bool:
        """Whether these are M-RoPE ids."""
        return self.rope.ndim == 3

    def gather(self, index: torch.Tensor) -> Positions:
        """The ids at ``index [B, S']`` (positions into the current sequence)."""
        text = self.text.gather(1, index)
        if not self.mrope:
            return Positions(text, text)
        return Positions(text, self.rope.gather(2, index[None].expand(3, -1, -1)))

    def largest(self, real: torch.Tensor) -> torch.Tensor:
        """``[B]`` int64, each row's largest id over its ``real [B, S]`` tokens (every axis for M-RoPE)."""
        ids = self.rope.amax(dim=0) if self.mrope else self.rope
        return torch.where(real, ids, -1).amax(dim=1)


def initial_positions(real: torch.Tensor, rope_positions: torch.Tensor | None) -> Positions:
    """The prefill's ids: text positions ``cumsum(real) - 1`` (0 at left padding, HF's convention) and, for an
    M-RoPE model, its ``rope_positions [3, B, S]`` (``get_rope_index``), else the text positions."""
    text = (real.long().cumsum(dim=1) - 1).clamp_min(0)
    if rope_positions is None:
        return Positions(text, text)
    if rope_positions.ndim != 3 or rope_positions.shape[0] != 3 or rope_positions.shape[1:] != real.shape:
        raise ValueError(f"M-RoPE positions must be [3, B, S] = [3, {real.shape[0]}, {real.shape[1]}], got "
                         f"{tuple(rope_positions.shape)}")
    return Positions(text, rope_positions.to(text.device).long())


def renumbered(old: Positions, real: torch.Tensor, before: torch.Tensor, gridded: torch.Tensor) -> Positions:
    """The ``"renumber"`` ids of a re-packed sequence (module docstring).

    old: the survivors' ids before the prune, gathered to the new layout (merged slots: anything); real:
    ``[B, S]`` bool; before: ``[B, S]`` bool, the text before the image; gridded: ``[B, S]`` bool, visual tokens
    with a grid cell (not merged ones). Padding gets id 0.
    """
    text = (real.long().cumsum(dim=1) - 1).clamp_min(0)
    if not old.mrope:
        return Positions(text, text)
    fixed = real & (before | gridded)  # ids that stay: text before the image, surviving grid tokens
    start = old.largest(fixed) + 1  # [B]: where the rest continues
    follow = real & ~fixed
    offset = follow.long().cumsum(dim=1) - 1
    moved = (start[:, None] + offset)[None].expand(3, -1, -1)
    rope = torch.where(follow[None], moved, torch.where(real[None], old.rope, 0))
    return Positions(text, rope)


def decode_positions(next_id: torch.Tensor, step: int, mrope: bool) -> Positions:
    """Ids of decoding step ``step`` (1 = the first token after the prefill's) in a layer whose cache ended at
    ``next_id - 1``: ``[B, 1]`` text positions and ``[B, 1]`` or ``[3, B, 1]`` rope ids."""
    ids = (next_id + step - 1)[:, None]
    return Positions(ids, ids[None].expand(3, -1, -1) if mrope else ids)
