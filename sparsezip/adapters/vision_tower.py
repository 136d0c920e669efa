"""Run a CLIP-style vision tower up to LLaVA's feature layer and read that layer's attention with hooks.

LLaVA feeds the projector ``hidden_states[vision_feature_layer]`` (-2: the output of encoder layer 22 of 24)
and discards the layers after it, so this runs ``embeddings -> pre_layrnorm -> layers[: feature + 1]`` and
stops: the output is bit-identical to the full tower's ``hidden_states[-2]`` and the last layer is never
computed. The CLS attention row and the head-averaged keys of the feature layer come from forward hooks on
that layer's ``q_proj`` / ``k_proj``, registered on this tower's own modules for the duration of one call and
always removed: the attention kernel (SDPA) is untouched, no attention map other than the CLS row is built, and
no class is patched, so other models in the process are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TowerFeatures:
    """What the feature layer yields for a batch of images.

    Attributes:
        hidden: ``[B, N, C]`` the feature layer's output (CLS at index 0).
        keys: ``[B, N, Dk]`` the layer's key projection (bias included, unscaled) averaged over heads, or
            ``None`` when the attention module is unsupported.
        cls_attn: ``[B, H, N]`` float32 softmax attention of the CLS query over all keys, or ``None``.
    """

    hidden: torch.Tensor
    keys: torch.Tensor | None
    cls_attn: torch.Tensor | None

    def rows(self, index: torch.Tensor) -> TowerFeatures:
        """The features of images ``index`` (``[R]`` int64, repeats allowed): ``[R, ...]`` each."""
        return TowerFeatures(*(None if t is None else t.index_select(0, index)
                               for t in (self.hidden, self.keys, self.cls_attn)))


class FeatureLayerTap:
    """Runs ``tower`` up to ``hidden_states[feature_layer]`` and taps that layer's attention.

    Args:
        tower: a CLIP-architecture vision model (``embeddings``, ``pre_layrnorm``, ``encoder.layers``), as in
            ``LlavaForConditionalGeneration.model.vision_tower``.
        feature_layer: index into ``hidden_states`` (``hidden_states[0]`` is the embedding output, so index
            ``h >= 1`` is the output of encoder layer ``h - 1``); negative counts from the end, as in LLaVA.

    ``attention_unavailable`` is ``None`` when the CLS row and keys can be read, else the reason (for errors).
    """

    def __init__(self, tower: nn.Module, feature_layer: int) -> None:
        missing = [name for name in ("embeddings", "pre_layrnorm", "encoder") if not hasattr(tower, name)]
        if missing or not hasattr(tower.encoder, "layers"):
            raise ValueError(
                f"unsupported vision tower {type(tower).__name__}: expected a CLIP-style tower with "
                f"embeddings, pre_layrnorm and encoder.layers (missing: {missing or ['encoder.layers']})"
            )
        if not isinstance(feature_layer, int):
            raise ValueError(f"vision_feature_layer must be one int, got {feature_layer!r}")
        num_layers = len(tower.encoder.layers)
        if not -(num_layers + 1) <= feature_layer <= num_layers:
            raise ValueError(f"vision_feature_layer {feature_layer} is out of range for {num_layers} layers")
        index = feature_layer % (num_layers + 1)
        if index == 0:
            raise ValueError("vision_feature_layer selects the embedding output, which has no attention layer")
        self.tower = tower
        self.layer_index = index - 1  # encoder layer whose output is hidden_states[feature_layer]
        self.attention = getattr(tower.encoder.layers[self.layer_index], "self_attn", None)
        self.attention_unavailable = self._check_attention(self.attention)

    @staticmethod
    def _check_attention(attn: nn.Module | None) -> str | None:
        if attn is None:
            return "the feature layer has no self_attn module"
        for proj in ("q_proj", "k_proj"):
            if not isinstance(getattr(attn, proj, None), nn.Linear):
                return f"its attention module {type(attn).__name__} has no nn.Linear {proj}"
        if not isinstance(getattr(attn, "num_heads", None), int):
            return f"its attention module {type(attn).__name__} does not expose num_heads"
        return None

    def hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values ``[B, 3, H, W]`` -> the feature layer's output ``[B, N, C]`` (CLS at 0), nothing tapped.

        Runs under the caller's grad mode, so training (the embedded model's recipe) uses the same forward as
        inference.
        """
        hidden = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        for layer in self.tower.encoder.layers[: self.layer_index + 1]:
            hidden = layer(hidden, None)
        return hidden

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> TowerFeatures:
        """pixel_values: ``[B, 3, H, W]`` -> :class:`TowerFeatures` of the feature layer."""
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}")
        captured: dict[str, torch.Tensor] = {}
        handles = []
        if self.attention_unavailable is None:
            for proj in ("q_proj", "k_proj"):
                handles.append(getattr(self.attention, proj).register_forward_hook(_capture_into(captured, proj)))
        try:
            hidden = self.hidden_states(pixel_values)
        finally:
            for handle in handles:
                handle.remove()
        if self.attention_unavailable is not None:
            return TowerFeatures(hidden=hidden, keys=None, cls_attn=None)
        keys, cls_attn = cls_attention_and_keys(
            captured["q_proj"], captured["k_proj"], self.attention.num_heads, _attention_scale(self.attention)
        )
        return TowerFeatures(hidden=hidden, keys=keys, cls_attn=cls_attn)


def _capture_into(store: dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store[name] = output

    return hook


def _attention_scale(attn: nn.Module) -> float:
    for name in ("scale", "scaling"):
        value = getattr(attn, name, None)
        if isinstance(value, float):
            return value
    return (attn.q_proj.out_features // attn.num_heads) ** -0.5


def cls_attention_and_keys(
    queries: torch.Tensor, keys: torch.Tensor, num_heads: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS row of a layer's attention and its head-averaged keys, from the q/k projection outputs.

    queries, keys: ``[B, N, C]`` (``q_proj`` / ``k_proj`` outputs, bias included), ``C = num_heads * Dk``.
    Returns ``(keys_mean [B, N, Dk], cls_attn [B, H, N])``; the attention is ``softmax(q_0 k^T * scale)`` in
    float32, exactly the row the layer's own (unmasked) attention computes for the CLS query.
    """
    if queries.ndim != 3 or queries.shape != keys.shape:
        raise ValueError(f"queries and keys must both be [B, N, C], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    b, n, c = keys.shape
    if c % num_heads:
        raise ValueError(f"channel count {c} is not divisible by num_heads={num_heads}")
    per_head = keys.view(b, n, num_heads, c // num_heads)  # [B, N, H, Dk]
    q_cls = queries[:, 0].view(b, num_heads, c // num_heads)  # [B, H, Dk]
    logits = torch.einsum("bhd,bnhd->bhn", q_cls.float(), per_head.float()) * scale
    return per_head.mean(dim=2), logits.softmax(dim=-1)
