"""Stage 1 of the embedded recipe: train the vision tower on dense labels of the training images.

Four objectives on the feature layer (the outputs the projector reads), through the family's own tower tap:

- per patch, which object or document word covers it (or background): the tower learns fast and its patch
  features carry *what* is where, including which word a patch of text shows;
- per patch, its row and column in the grid: keeps *where* a patch is in its features, which the language
  model needs for left/right and region questions (without it MME position sat at chance);
- per patch, its x / y coordinate regressed by a linear map of the features themselves (``coordinate_weight``):
  *where* becomes a direction in feature space, so that comparing two objects' positions is a difference the
  language model can take; with the stage-2 name targets it lifted position from chance (see the model card);
- on the global token (CLS; Qwen2.5-VL, which has none: the patches' mean), which objects and words are
  present (multi-label): the CLS token gathers the
  evidence, so its attention -- what VisionZip and SparseZip rank patches by -- points at objects and text.

The heads are thrown away afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sparsezip.embedded.family import LLAVA, TinyFamily
from sparsezip.embedded.recipe import TrainRecipe, epoch_order, log_window, optimizer, schedule
from sparsezip.embedded.training_data import NUM_CLASSES, PATCH_CLASSES, PRESENCE_CLASSES, TrainingImages


def train_tower(
    model: nn.Module,
    processor: object,
    data: TrainingImages,
    recipe: TrainRecipe,
    log: Callable[[str], None] = print,
    family: TinyFamily = LLAVA,
) -> dict[str, float]:
    """Train ``model``'s vision tower in place; returns the last logging window's mean metrics (patch
    accuracy on object and on word patches, position accuracy, presence accuracy)."""
    tower = family.tower(model)
    width = recipe.spec.vision_hidden
    grid = family.position_grid(recipe.spec)
    gen = torch.Generator().manual_seed(recipe.seed * 1000 + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed * 1000 + 2)
        patch_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, PATCH_CLASSES))
        position_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * grid))
        cls_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, PRESENCE_CLASSES))
        # only built when used, so a recipe without it trains exactly the weights it did before
        coordinate_head = nn.Linear(width, 2) if recipe.coordinate_weight else None
    heads = (patch_head, position_head, cls_head, *([coordinate_head] if coordinate_head is not None else []))
    params = [*tower.parameters(), *(p for h in heads for p in h.parameters())]
    opt = optimizer(params, recipe.tower_lr, recipe.weight_decay)
    class_weight = torch.ones(PATCH_CLASSES)
    class_weight[0] = recipe.background_weight
    tower.train()
    order = epoch_order(len(data), recipe.tower_steps * recipe.tower_batch, gen)
    window: dict[str, list[float]] = {"loss": [], "object_patch_acc": [], "word_patch_acc": [], "position_acc": [],
                                      "presence_acc": []}
    means: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(recipe.tower_steps):
        for group in opt.param_groups:
            group["lr"] = recipe.tower_lr * schedule(step, recipe.tower_steps, recipe.warmup)
        idx = order[step * recipe.tower_batch:(step + 1) * recipe.tower_batch]
        views = family.tower_views(model, processor, data.pixels[idx], torch.from_numpy(data.patch_labels[idx]),
                                   torch.from_numpy(data.presence[idx]), recipe.spec)
        patches, cls, labels, presence, rows, cols = (views.patches, views.global_token, views.labels,
                                                      views.presence, views.rows, views.cols)
        patch_logits = patch_head(patches)
        row_logits, col_logits = position_head(patches).split(grid, dim=-1)
        cls_logits = cls_head(cls)
        b = patches.shape[0]
        position_loss = F.cross_entropy(row_logits.flatten(0, 1), rows.repeat(b)) + \
            F.cross_entropy(col_logits.flatten(0, 1), cols.repeat(b))
        loss = F.cross_entropy(patch_logits.flatten(0, 1), labels.flatten(), weight=class_weight) + \
            recipe.position_weight * position_loss + F.binary_cross_entropy_with_logits(cls_logits, presence)
        if coordinate_head is not None:  # x, y in [-1, 1], linear in the features themselves (no norm)
            target = torch.stack([cols, rows], dim=-1).float() * (2 / max(1, grid - 1)) - 1
            coordinate_loss = F.mse_loss(coordinate_head(patches), target.expand(b, -1, -1))
            loss = loss + recipe.coordinate_weight * coordinate_loss
            window.setdefault("coordinate_mse", []).append(coordinate_loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            window["loss"].append(loss.item())
            hit = patch_logits.argmax(-1) == labels
            for name, labelled in (("object_patch_acc", (labels > 0) & (labels <= NUM_CLASSES)),
                                   ("word_patch_acc", labels > NUM_CLASSES)):
                if labelled.any():
                    window[name].append(hit[labelled].float().mean().item())
            window["position_acc"].append(((row_logits.argmax(-1) == rows) & (col_logits.argmax(-1) == cols))
                                          .float().mean().item())
            window["presence_acc"].append(((cls_logits > 0).float() == presence).all(-1).float().mean().item())
        means = log_window(log, "tower", step, recipe.tower_steps, start, window) or means
    tower.eval()
    return means


@torch.no_grad()
def feature_layer_patches(
    model: nn.Module, processor: object, pixels: np.ndarray, batch: int = 256, family: TinyFamily = LLAVA
) -> torch.Tensor:
    """``pixels: [n, S, S, 3]`` uint8 -> the feature layer's patch outputs ``[n, P, C]`` (what the projector
    reads; LLaVA: layer -2, CLS dropped; LLaVA-NeXT: every crop's, crop-major; Qwen2.5-VL: the last block's, in
    the merger's order)."""
    chunks = [family.tower_hidden(model, family.vision_inputs(processor, pixels[i:i + batch]))[0]
              for i in range(0, len(pixels), batch)]
    return torch.cat(chunks)
