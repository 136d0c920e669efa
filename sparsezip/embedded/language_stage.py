"""Stage 2 of the embedded recipe: train projector + language model (tower frozen) on questions about the
training images, in exactly the evaluation prompt, answer then ``</s>``.

Yes/no questions about scenes (existence with hard negatives, colour of a shape or a region, count, absolute
and relative position) and field questions about documents (the answer is the field's word). The long
shared prefix (system prompt + image tokens) runs once per image; its KV cache is repeated for that image's
questions (gradients flow through it), which makes a step several times cheaper than running every
question's full sequence. Two things made this stage work at all (without them the LM sat at chance for
hundreds of steps): a fan-in initialisation with a feature-standardising projector
(:func:`init_language_side`), and dense auxiliary targets at the answer position
(:func:`sparsezip.embedded.training_data.aux_targets`: what is asked, what is there, where).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sparsezip.embedded.datasets import TRAIN_STREAM
from sparsezip.embedded.family import LLAVA, TinyFamily
from sparsezip.embedded.recipe import TrainRecipe, epoch_order, log_window, optimizer, schedule
from sparsezip.embedded.scenes import Scene
from sparsezip.embedded.tokens import PromptTokens
from sparsezip.embedded.training_data import (
    AUX_CLASSES,
    NAME_BINS,
    PRESENCE_CLASSES,
    TrainingImages,
    TrainQuestion,
    training_questions,
)


@dataclass
class QuestionBatch:
    """Suffix token ids ``[M, S]`` (right-padded), their mask ``[M, S]``, and the loss targets: positions
    ``[M, A]`` in the suffix whose next token is scored, target ids ``[M, A]`` (-100 = ignore)."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor


def question_batch(prompts: PromptTokens, items: Sequence[tuple[str, bool | str]], pad_id: int) -> QuestionBatch:
    """Tokenize ``(question, answer)`` items (answer: yes/no bool or answer text) into a
    :class:`QuestionBatch` (loss on the answer and ``</s>``)."""
    rows = [prompts.suffix("pope", q, a) for q, a in items]
    width = max(len(ids) for ids, _ in rows)
    n_answer = max(len(ids) - p for ids, p in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), n_answer), dtype=torch.long)
    targets = torch.full((len(rows), n_answer), -100, dtype=torch.long)
    for r, (row, p) in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        k = len(row) - p
        positions[r, :k] = torch.arange(p - 1, len(row) - 1)
        targets[r, :k] = torch.tensor(row[p:])
    return QuestionBatch(ids, mask, positions, targets)


def suffix_states(
    model: nn.Module,
    prompts: PromptTokens,
    features: torch.Tensor,
    batch: QuestionBatch,
    questions_per_image: int,
    family: TinyFamily = LLAVA,
) -> tuple[torch.Tensor, ...]:
    """The hidden states of ``questions_per_image`` question suffixes per image, running each image's prefix
    (system prompt + image tokens) once: the input embeddings and each layer's output ``[B * Q, S, D]`` (HF's
    ``hidden_states``; the last one after the final norm).

    ``features: [B, P, C]`` feature-layer patch outputs; ``batch`` holds ``B * questions_per_image`` suffixes
    (image-major). Mathematically the same as running every full prompt, since the prefix is causal and
    question-independent: its KV cache is repeated per question and gradients flow through it (tested).
    """
    from transformers import DynamicCache

    lm = family.language_model(model)
    b = features.shape[0]
    prefix = lm.get_input_embeddings()(prompts.prefix).unsqueeze(0).repeat(b, 1, 1)
    prefix[:, prompts.image_positions] = family.projector(model)(features)
    cache = DynamicCache(config=lm.config)
    prefix_positions, start = family.prefix_positions(model, prompts)
    if prefix_positions is not None:  # M-RoPE: [3, 1, P] -> [3, B, P]
        prefix_positions = prefix_positions.expand(-1, b, -1)
    lm(inputs_embeds=prefix, cache=cache, use_cache=True, position_ids=prefix_positions)
    cache.batch_repeat_interleave(questions_per_image)
    p = prompts.prefix.shape[0]
    mask = torch.cat([torch.ones(batch.ids.shape[0], p, dtype=torch.long), batch.mask], dim=1)
    positions = (torch.arange(batch.ids.shape[1]) + start).unsqueeze(0).expand_as(batch.ids)
    out = lm(input_ids=batch.ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
             output_hidden_states=True)
    return (*out.hidden_states[:-1], out.last_hidden_state)


def at_scored_positions(hidden: torch.Tensor, batch: QuestionBatch) -> torch.Tensor:
    """``hidden [B * Q, S, D]`` at ``batch.positions`` -> ``[B * Q, A, D]`` (the family's ``lm_head`` turns them
    into the logits of the answer tokens)."""
    return hidden.gather(1, batch.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def name_positions(batch: QuestionBatch, items: Sequence[TrainQuestion], tokenizer: object) -> tuple[torch.Tensor, ...]:
    """Where the objects the questions name end in ``batch``'s suffixes, and their targets: question rows
    ``[N]``, suffix positions ``[N]`` (each name's last token) and column / row classes ``[N]`` (see
    :func:`sparsezip.embedded.training_data.name_targets`)."""
    rows, positions, cols, grid_rows = [], [], [], []
    for r, tq in enumerate(items):
        ids = batch.ids[r].tolist()
        for name, col, row in tq.names:
            name_ids = tokenizer(f" {name}", add_special_tokens=False).input_ids
            end = next((i + len(name_ids) - 1 for i in range(len(ids) - len(name_ids) + 1)
                        if ids[i:i + len(name_ids)] == name_ids), None)
            if end is None:
                raise ValueError(f"training question {tq.question!r}: the tokens of {name!r} are not in its prompt")
            rows.append(r), positions.append(end), cols.append(col), grid_rows.append(row)
    return tuple(torch.tensor(v, dtype=torch.long) for v in (rows, positions, cols, grid_rows))


@torch.no_grad()
def init_language_side(model: nn.Module, features: torch.Tensor, seed: int, family: TinyFamily = LLAVA) -> None:
    """Re-initialise projector and language model for training from scratch at this small width.

    HF's default (normal, std 0.02) is made for wide models: at width 128 it leaves attention logits ~20x
    smaller than a fan-in init, and the LM sat at chance for hundreds of steps. Here every linear layer
    gets std ``fan_in ** -0.5``, token embeddings std 1, and the projector's first layer standardises
    its input (per-channel mean/std of ``features: [n, P, C]``; feature-layer outputs carry a large shared
    component) so that image and text tokens enter the LM at comparable scales.
    """
    gen = torch.Generator().manual_seed(seed)
    lm, projector = family.language_model(model), family.projector(model)
    for module in [*lm.modules(), family.lm_head(model), *projector.modules()]:
        if isinstance(module, nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * module.in_features**-0.5)
            if module.bias is not None:
                module.bias.zero_()
    embed = lm.get_input_embeddings()
    embed.weight.copy_(torch.randn(embed.weight.shape, generator=gen))
    flat = family.projector_input(model, features)
    mean, std = flat.mean(0), flat.std(0) + 1e-5
    first = projector.linear_1
    first.weight.div_(std)
    first.bias.copy_(-first.weight @ mean)


def lm_order(data: TrainingImages, recipe: TrainRecipe, gen: torch.Generator) -> np.ndarray:
    """Image indices of stage 2, ``lm_steps * lm_batch_images`` of them: seeded permutations of the scenes
    for the first ``lm_scene_only_steps`` steps, then of every image."""
    bsz = recipe.lm_batch_images
    first = min(recipe.lm_scene_only_steps, recipe.lm_steps) * bsz
    if not first:
        return epoch_order(len(data), recipe.lm_steps * bsz, gen)
    scenes = np.asarray([i for i, item in enumerate(data.items) if isinstance(item, Scene)])
    if not len(scenes):
        raise ValueError("lm_scene_only_steps > 0 but the training images hold no scene")
    return np.concatenate([scenes[epoch_order(len(scenes), first, gen)],
                           epoch_order(len(data), recipe.lm_steps * bsz - first, gen)])


def train_language(
    model: nn.Module,
    processor: object,
    data: TrainingImages,
    features: torch.Tensor,
    recipe: TrainRecipe,
    log: Callable[[str], None] = print,
    family: TinyFamily = LLAVA,
    validation: Callable[[], dict[str, float]] | None = None,
    validate_every: int = 0,
) -> dict[str, float]:
    """Train projector and language model (tower frozen) on questions about ``data``'s images, whose
    feature-layer patch outputs are ``features: [n, P, C]``. The first ``recipe.lm_scene_only_steps`` steps
    see scenes only (documents join afterwards); scene questions are ``recipe.existence_share`` existence.

    ``validation`` (optional, e.g. :func:`sparsezip.embedded.validation.validate` bound to a set) is called
    every ``validate_every`` steps and at the end, and logged; it must not draw from the training generators.
    The returned means then hold the last validation as ``val_<kind>``.

    Auxiliary targets (weight ``recipe.aux_weight``; a linear head, discarded afterwards) on the hidden
    state that predicts the answer's first token: what is present (objects and words), what the question
    asks about and where the named object or region is. Answers alone are a one-bit signal per yes/no
    question; with them only the LM sat at chance for hundreds of steps, unable to find the asked words among
    ~180 image and prompt tokens. These dense targets teach it to gather the question and the image there.
    """
    prompts = family.prompt_tokens(processor)
    pad_id = processor.tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(recipe.seed * 1000 + 3)
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(TRAIN_STREAM, 9)))
    width = recipe.spec.text_hidden
    init_language_side(model, features[: min(len(features), 2000)], recipe.seed * 1000 + 4, family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed * 1000 + 5)
        aux_head = nn.Linear(width, PRESENCE_CLASSES + sum(AUX_CLASSES))
        # only built when used, so a recipe without it trains exactly the weights it did before
        name_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * (1 + NAME_BINS))) \
            if recipe.name_weight else None
    name_layer = recipe.spec.text_layers // 2
    family.tower(model).requires_grad_(False)
    lm, projector, head = family.language_model(model), family.projector(model), family.lm_head(model)
    projector.requires_grad_(True)  # Qwen2.5-VL's merger is part of its tower module
    params = [*projector.parameters(), *lm.parameters(), *head.parameters(), *aux_head.parameters(),
              *(name_head.parameters() if name_head is not None else ())]
    opt = optimizer(params, recipe.lm_lr, recipe.weight_decay)
    model.train()
    q, bsz = recipe.questions_per_image, recipe.lm_batch_images
    order = lm_order(data, recipe, gen)
    window: dict[str, list[float]] = {"loss": [], "aux_loss": [], "answer_acc": []}
    if name_head is not None:
        window |= {"name_loss": [], "name_col_acc": []}
    means: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(recipe.lm_steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lm_lr * schedule(step, recipe.lm_steps, recipe.warmup)
        idx = order[step * bsz:(step + 1) * bsz]
        items = [tq for i in idx for tq in training_questions(data.items[i], rng, q, recipe.existence_share)]
        batch = question_batch(prompts, [(tq.question, tq.answer) for tq in items], pad_id)
        states = suffix_states(model, prompts, features[idx], batch, q, family)
        hidden = at_scored_positions(states[-1], batch)
        logits = head(hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        aux = aux_head(hidden[:, 0])
        presence = torch.from_numpy(data.presence[idx]).repeat_interleave(q, dim=0)
        classes = torch.tensor([tq.aux for tq in items])
        aux_loss = F.binary_cross_entropy_with_logits(aux[:, :PRESENCE_CLASSES], presence) + sum(
            F.cross_entropy(logits_j, classes[:, j])
            for j, logits_j in enumerate(aux[:, PRESENCE_CLASSES:].split(AUX_CLASSES, dim=-1)))
        total = loss + recipe.aux_weight * aux_loss
        if name_head is not None:
            rows, pos, cols, grid_rows = name_positions(batch, items, processor.tokenizer)
            name_logits = name_head(states[name_layer][rows, pos]).split(1 + NAME_BINS, dim=-1)
            name_loss = F.cross_entropy(name_logits[0], cols) + F.cross_entropy(name_logits[1], grid_rows)
            total = total + recipe.name_weight * name_loss
            window["name_loss"].append(name_loss.item())
            window["name_col_acc"].append((name_logits[0].argmax(-1) == cols).float().mean().item())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window["loss"].append(loss.item())
        window["aux_loss"].append(aux_loss.item())
        window["answer_acc"].append((logits[:, 0].argmax(-1) == batch.targets[:, 0]).float().mean().item())
        means = log_window(log, "lm", step, recipe.lm_steps, start, window) or means
        last = step + 1 == recipe.lm_steps
        if validation is not None and (last or (validate_every and (step + 1) % validate_every == 0)):
            table = validation()
            log(f"lm step {step + 1} validation " + " ".join(f"{k}={v:.3f}" for k, v in table.items()))
            if last:
                means = {**means, **{f"val_{k}": v for k, v in table.items()}}
    model.eval()
    family.tower(model).requires_grad_(True)
    return means
