"""Training recipe of the embedded tiny LLaVA (``sparsezip train-tiny``): CPU, minutes, reproducible.

Two stages, as known to work on a 2-core CPU:

1. **Vision tower** on scene labels. Per-patch classification (which of the 12 objects, or background,
   covers each patch) read off the layer -2 patch outputs -- the features LLaVA projects -- makes the tower
   learn fast; a multi-label "which objects are present" objective read off the layer -2 CLS output makes
   the CLS token gather object evidence, so its attention (what VisionZip and SparseZip rank patches by)
   points at objects. The heads are thrown away afterwards.
2. **Projector + language model** on yes/no questions (existence with hard negatives, colour, count,
   position) in exactly the evaluation prompt (``build_prompt``), answer ``Yes``/``No`` followed by
   ``</s>``, tower frozen. The long shared prefix (system prompt + 144 image tokens) runs once per image;
   its KV cache is repeated for that image's questions (gradients flow through it), which makes a step
   several times cheaper than running every question's full sequence. Two things made this stage work
   at all (without them the LM sat at chance for hundreds of steps, as the issue's earlier attempt did):
   a fan-in initialisation with a feature-standardising projector (:func:`init_language_side`), and
   dense auxiliary targets at the answer position (:func:`aux_targets`: what is asked, what is there).

Determinism: ``torch.set_num_threads`` is fixed by the recipe, every random draw uses an explicit
``numpy``/``torch`` generator seeded from the recipe seed, data order is a seeded permutation, and the
global RNG is never read. Same seed and thread count, same weights (on the same CPU kind).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sparsezip.adapters.vision_tower import FeatureLayerTap
from sparsezip.data.prompts import build_prompt
from sparsezip.embedded.datasets import TRAIN_STREAM, stream_rng
from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava, default_corpus
from sparsezip.embedded.scenes import (
    COLOURS,
    COUNT_WORDS,
    NUM_CLASSES,
    OBJECT_NAMES,
    QA,
    SHAPES,
    Scene,
    class_prior,
    colour_pair,
    count_pair,
    existence_question,
    jpeg_round_trip,
    patch_labels,
    pope_negatives,
    position_pair,
    render_scene,
    sample_scene,
)
from sparsezip.embedded.tokens import ANSWER_TEXT, PromptTokens, pixel_values

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

TRAIN_SPLIT, VALIDATION_SPLIT = 0, 1  # sub-streams of TRAIN_STREAM

TINY_SPEC = TinyLlavaSpec(
    vision_hidden=128, vision_intermediate=384, vision_layers=4, vision_heads=4,
    text_hidden=128, text_intermediate=384, text_layers=4, text_heads=4, vocab_size=512,
)


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that decides the trained weights (recorded in the model card)."""

    spec: TinyLlavaSpec = TINY_SPEC
    seed: int = 0
    threads: int = 2
    images: int = 16_000  # rendered once, shared by both stages
    # stage 1: vision tower
    tower_steps: int = 1000
    tower_batch: int = 64
    tower_lr: float = 3e-3
    background_weight: float = 0.25  # per-patch loss weight of background patches (objects: 1)
    # stage 2: projector + language model
    lm_steps: int = 1200
    lm_batch_images: int = 16
    questions_per_image: int = 8
    lm_lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0  # stage 2 auxiliary presence/count targets

    def to_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ training data
def training_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[QA]:
    """``n`` questions about ``scene``, about half of them "yes": existence (positives, and negatives that
    are mostly attribute-sharing -- the adversarial kind that forces binding colour to shape -- else random
    or prior-weighted "popular"), plus colour, count and position questions."""
    present = sorted(scene.classes)
    prior = class_prior()
    out: list[QA] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.3:
            out.append(QA(existence_question(present[int(rng.integers(len(present)))]), True))
        elif kind < 0.6:
            setting = rng.choice(["adversarial", "adversarial", "adversarial", "random", "popular"])
            if setting == "popular":  # frequent absent objects: sample absent classes by the class prior
                absent = [c for c in range(NUM_CLASSES) if c not in scene.classes]
                weights = prior[absent] / prior[absent].sum()
                cls = int(rng.choice(absent, p=weights))
            else:
                (cls,) = pope_negatives(scene.classes, setting, 1, rng)
            out.append(QA(existence_question(cls), False))
        else:
            maker = (colour_pair, count_pair, position_pair)[int(rng.integers(3))]
            pair = maker(scene, rng)
            if pair is not None:
                out.append(pair[int(rng.integers(2))])
    return out


# Auxiliary categorical targets of stage 2 (class counts): objects in the scene (0-4); the asked colour,
# shape, count and side (0 = not asked); the named object's state (0 = none named, absent, left, middle,
# right third of the image).
AUX_CLASSES: tuple[int, ...] = (5, 1 + len(COLOURS), 1 + len(SHAPES), 5, 3, 5)


def aux_targets(question: str, scene: Scene) -> tuple[int, ...]:
    """The auxiliary targets (see ``AUX_CLASSES``) of one synthetic question about ``scene``."""
    words = question.rstrip("?").split()
    colour = next((1 + list(COLOURS).index(w) for w in words if w in COLOURS), 0)
    shape = next((1 + SHAPES.index(w) for w in words if w in SHAPES), 0)
    count = next((COUNT_WORDS.index(w) for w in words if w in COUNT_WORDS[1:5]), 0)
    side = next((1 + ("left", "right").index(w) for w in words if w in ("left", "right")), 0)
    named = next((f"{a} {b}" for a, b in itertools.pairwise(words) if a in COLOURS and b in SHAPES), None)
    state = 0
    if named is not None:
        obj = next((o for o in scene.objects if o.name == named), None)
        state = 1 if obj is None else 2 + min(2, int(3 * obj.cx / scene.size))
    return len(scene.objects), colour, shape, count, side, state


@dataclass
class SceneData:
    """Rendered scenes: decoded-JPEG pixels ``[n, S, S, 3]`` uint8, per-patch labels ``[n, P]`` int64,
    presence ``[n, 12]`` float32, and the scenes themselves."""

    pixels: np.ndarray
    patch_labels: np.ndarray
    presence: np.ndarray
    scenes: list[Scene] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scenes)


def render_scenes(seed: int, split: int, n: int, patch: int) -> SceneData:
    """Sample and render ``n`` scenes of a training sub-stream, through the fixtures' JPEG round trip."""
    rng = stream_rng(seed, TRAIN_STREAM, split)
    scenes = [sample_scene(rng) for _ in range(n)]
    pixels, labels, presence = [], [], np.zeros((n, NUM_CLASSES), dtype=np.float32)
    for i, scene in enumerate(scenes):
        image, label_map = render_scene(scene)
        pixels.append(np.asarray(jpeg_round_trip(image)))
        labels.append(patch_labels(label_map, patch))
        presence[i, sorted(scene.classes)] = 1.0
    return SceneData(np.stack(pixels), np.stack(labels), presence, scenes)


# ------------------------------------------------------------------------------------------- the tower
def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 5% (multiplier of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def train_tower(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    data: SceneData,
    recipe: TrainRecipe,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Stage 1: train ``model``'s vision tower in place on per-patch and CLS presence labels.

    Returns the last logging window's mean metrics (patch accuracy on object patches, presence accuracy).
    """
    tower = model.model.vision_tower
    width = recipe.spec.vision_hidden
    gen = torch.Generator().manual_seed(recipe.seed * 1000 + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed * 1000 + 2)
        patch_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, NUM_CLASSES + 1))
        cls_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, NUM_CLASSES))
    params = [*tower.parameters(), *patch_head.parameters(), *cls_head.parameters()]
    opt = _optimizer(params, recipe.tower_lr, recipe.weight_decay)
    class_weight = torch.ones(NUM_CLASSES + 1)
    class_weight[0] = recipe.background_weight
    tap = FeatureLayerTap(tower, model.config.vision_feature_layer)
    tower.train()
    order = _epoch_order(len(data), recipe.tower_steps * recipe.tower_batch, gen)
    window: dict[str, list[float]] = {"loss": [], "object_patch_acc": [], "presence_acc": []}
    means: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(recipe.tower_steps):
        for group in opt.param_groups:
            group["lr"] = recipe.tower_lr * _schedule(step, recipe.tower_steps, recipe.warmup)
        idx = order[step * recipe.tower_batch:(step + 1) * recipe.tower_batch]
        pixels = pixel_values(processor, data.pixels[idx])
        labels = torch.from_numpy(data.patch_labels[idx])
        presence = torch.from_numpy(data.presence[idx])
        hidden = tap.hidden_states(pixels)
        patch_logits = patch_head(hidden[:, 1:])
        cls_logits = cls_head(hidden[:, 0])
        loss = F.cross_entropy(patch_logits.flatten(0, 1), labels.flatten(), weight=class_weight) + \
            F.binary_cross_entropy_with_logits(cls_logits, presence)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            obj = labels > 0
            window["loss"].append(loss.item())
            window["object_patch_acc"].append((patch_logits.argmax(-1)[obj] == labels[obj]).float().mean().item())
            window["presence_acc"].append(((cls_logits > 0).float() == presence).all(-1).float().mean().item())
        means = _log_window(log, "tower", step, recipe.tower_steps, start, window) or means
    tower.eval()
    return means


def _epoch_order(n: int, total: int, gen: torch.Generator) -> np.ndarray:
    """``total`` indices into ``n`` items: concatenated seeded permutations (every item once per epoch)."""
    epochs = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[:total].numpy()


@torch.no_grad()
def layer_m2_features(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, pixels: np.ndarray, batch: int = 256
) -> torch.Tensor:
    """``pixels: [n, S, S, 3]`` uint8 -> layer -2 patch features ``[n, P, C]`` (CLS dropped, as LLaVA)."""
    tap = FeatureLayerTap(model.model.vision_tower, model.config.vision_feature_layer)
    chunks = [tap.hidden_states(pixel_values(processor, pixels[i:i + batch]))[:, 1:]
              for i in range(0, len(pixels), batch)]
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------- the language model
@dataclass
class QuestionBatch:
    """Suffix token ids ``[M, S]`` (right-padded), their mask ``[M, S]``, and the loss targets: positions
    ``[M, A]`` in the suffix whose next token is scored, target ids ``[M, A]`` (-100 = ignore)."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor


def question_batch(prompts: PromptTokens, items: Sequence[tuple[str, bool]], pad_id: int) -> QuestionBatch:
    """Tokenize ``(question, answer)`` items into a :class:`QuestionBatch` (loss on answer and ``</s>``)."""
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


def shared_prefix_hidden(
    model: LlavaForConditionalGeneration,
    prompts: PromptTokens,
    features: torch.Tensor,
    batch: QuestionBatch,
    questions_per_image: int,
) -> torch.Tensor:
    """Final hidden states at the scored positions of ``questions_per_image`` questions per image, running
    each image's prefix (system prompt + image tokens) once.

    ``features: [B, P, C]`` layer -2 patch features; ``batch`` holds ``B * questions_per_image`` suffixes
    (image-major). Returns ``[B * Q, A, D]`` at ``batch.positions`` (``model.lm_head`` turns them into
    logits). Mathematically the same as running every full prompt, since the prefix is causal and
    question-independent: its KV cache is repeated per question and gradients flow through it (tested).
    """
    from transformers import DynamicCache

    lm = model.model.language_model
    b = features.shape[0]
    prefix = lm.get_input_embeddings()(prompts.prefix).unsqueeze(0).repeat(b, 1, 1)
    prefix[:, prompts.image_positions] = model.model.multi_modal_projector(features)
    cache = DynamicCache(config=lm.config)
    lm(inputs_embeds=prefix, cache=cache, use_cache=True)
    cache.batch_repeat_interleave(questions_per_image)
    p = prompts.prefix.shape[0]
    mask = torch.cat([torch.ones(batch.ids.shape[0], p, dtype=torch.long), batch.mask], dim=1)
    positions = (torch.arange(batch.ids.shape[1]) + p).unsqueeze(0).expand_as(batch.ids)
    hidden = lm(input_ids=batch.ids, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True).last_hidden_state
    return hidden.gather(1, batch.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


@torch.no_grad()
def init_language_side(model: LlavaForConditionalGeneration, features: torch.Tensor, seed: int) -> None:
    """Re-initialise projector and language model for training from scratch at this small width.

    HF's default (normal, std 0.02) is made for wide models: at width 128 it leaves attention logits ~20x
    smaller than a fan-in init, and the LM sat at chance for hundreds of steps. Here every linear layer
    gets std ``fan_in ** -0.5``, token embeddings std 1, and the projector's first layer standardises
    its input (per-channel mean/std of ``features: [n, P, C]``; layer -2 features carry a large shared
    component) so that image and text tokens enter the LM at comparable scales.
    """
    gen = torch.Generator().manual_seed(seed)
    lm = model.model.language_model
    for module in [*lm.modules(), model.lm_head, *model.model.multi_modal_projector.modules()]:
        if isinstance(module, nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * module.in_features**-0.5)
            if module.bias is not None:
                module.bias.zero_()
    lm.embed_tokens.weight.copy_(torch.randn(lm.embed_tokens.weight.shape, generator=gen))
    flat = features.reshape(-1, features.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-5
    first = model.model.multi_modal_projector.linear_1
    first.weight.div_(std)
    first.bias.copy_(-first.weight @ mean)


def train_language(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    data: SceneData,
    features: torch.Tensor,
    recipe: TrainRecipe,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Stage 2: train the projector and the language model (tower frozen) on yes/no questions about
    ``data``'s scenes, whose layer -2 patch features are ``features: [n, P, C]``.

    Auxiliary targets (weight ``recipe.aux_weight``; a linear head, discarded afterwards) on the hidden
    state that predicts the answer: what the question asks about and where the named object is
    (:func:`aux_targets`), which objects are present and how many. Yes/no answers alone are a one-bit signal per question; with it
    the LM sat at chance for hundreds of steps, unable to find the asked words among ~180 image and
    prompt tokens. These dense targets teach it to gather the question and the image at that position.
    """
    prompts = PromptTokens.build(processor)
    pad_id = processor.tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(recipe.seed * 1000 + 3)
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(TRAIN_STREAM, 9)))
    width = recipe.spec.text_hidden
    init_language_side(model, features[: min(len(features), 2000)], recipe.seed * 1000 + 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed * 1000 + 5)
        aux_head = nn.Linear(width, NUM_CLASSES + sum(AUX_CLASSES))
    model.model.vision_tower.requires_grad_(False)
    params = [*model.model.multi_modal_projector.parameters(), *model.model.language_model.parameters(),
              *model.lm_head.parameters(), *aux_head.parameters()]
    opt = _optimizer(params, recipe.lm_lr, recipe.weight_decay)
    model.train()
    q, bsz = recipe.questions_per_image, recipe.lm_batch_images
    order = _epoch_order(len(data), recipe.lm_steps * bsz, gen)
    window: dict[str, list[float]] = {"loss": [], "aux_loss": [], "answer_acc": []}
    means: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(recipe.lm_steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lm_lr * _schedule(step, recipe.lm_steps, recipe.warmup)
        idx = order[step * bsz:(step + 1) * bsz]
        items = [(qa.question, qa.answer) for i in idx for qa in training_questions(data.scenes[i], rng, q)]
        batch = question_batch(prompts, items, pad_id)
        hidden = shared_prefix_hidden(model, prompts, features[idx], batch, q)
        logits = model.lm_head(hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        aux = aux_head(hidden[:, 0])
        presence = torch.from_numpy(data.presence[idx]).repeat_interleave(q, dim=0)
        classes = torch.tensor([aux_targets(question, data.scenes[i])
                                for i, (question, _) in zip(np.repeat(idx, q), items, strict=True)])
        aux_loss = F.binary_cross_entropy_with_logits(aux[:, :NUM_CLASSES], presence) + sum(
            F.cross_entropy(logits_j, classes[:, j])
            for j, logits_j in enumerate(aux[:, NUM_CLASSES:].split(AUX_CLASSES, dim=-1)))
        opt.zero_grad(set_to_none=True)
        (loss + recipe.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window["loss"].append(loss.item())
        window["aux_loss"].append(aux_loss.item())
        window["answer_acc"].append((logits[:, 0].argmax(-1) == batch.targets[:, 0]).float().mean().item())
        means = _log_window(log, "lm", step, recipe.lm_steps, start, window) or means
    model.eval()
    model.model.vision_tower.requires_grad_(True)
    return means


# --------------------------------------------------------------------------------------------- helpers
def _log_window(log: Callable[[str], None], stage: str, step: int, total: int, start: float,
                window: dict[str, list[float]]) -> dict[str, float] | None:
    """Every 100 steps (and at the last): log the means of ``window`` and empty it; returns the means then,
    else ``None``."""
    if (step + 1) % 100 and step + 1 != total:
        return None
    means = {k: float(np.mean(v)) for k, v in window.items()}
    log(f"{stage} step {step + 1}/{total} {time.perf_counter() - start:.0f}s "
        + " ".join(f"{k}={v:.3f}" for k, v in means.items()))
    for values in window.values():
        values.clear()
    return means

def training_corpus() -> list[str]:
    """Tokenizer corpus: every question form the synthetic sets ask, in the evaluation prompt, with its
    answer (so the BPE merges cover them), plus the default corpus (documents, captions)."""
    from sparsezip.embedded.scenes import count_question

    questions = [existence_question(c) for c in range(NUM_CLASSES)]
    questions += [f"Is the {s} in the image {c}?" for s in SHAPES for c in COLOURS]
    questions += [count_question(n) for n in range(1, 5)]
    questions += [f"Is the {name} on the {side} side of the image?" for name in OBJECT_NAMES
                  for side in ("left", "right")]
    lines = [build_prompt("pope", q) + ANSWER_TEXT[a] + "</s>" for q in questions for a in (True, False)]
    return lines + default_corpus()


def build_untrained(recipe: TrainRecipe) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The randomly initialised model and processor the recipe starts from."""
    return build_tiny_llava(recipe.spec, seed=recipe.seed, corpus=training_corpus())


# ------------------------------------------------------------------------------------------ the command
def train_tiny(
    out_dir: str | Path,
    recipe: TrainRecipe | None = None,
    *,
    eval_root: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the tiny LLaVA with ``recipe`` and write it to ``out_dir`` (``save_pretrained`` safetensors +
    processor + ``README.md`` model card + ``training_report.json``). With ``eval_root`` (a make-fixtures
    data root), the card reports POPE accuracy and CLS-top-k vs random selection at 1/2, 1/4, 1/8 of the
    tokens. Returns the report. Torch's thread count is set to ``recipe.threads`` for the run and restored.
    """
    recipe = recipe or TrainRecipe()
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        start = time.perf_counter()
        model, processor = build_untrained(recipe)
        data = render_scenes(recipe.seed, TRAIN_SPLIT, recipe.images, recipe.spec.patch_size)
        log(f"rendered {len(data)} training scenes in {time.perf_counter() - start:.0f}s")
        tower_metrics = train_tower(model, processor, data, recipe, log)
        features = layer_m2_features(model, processor, data.pixels)
        lm_metrics = train_language(model, processor, data, features, recipe, log)
        minutes = (time.perf_counter() - start) / 60
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        report: dict = {"recipe": recipe.to_json(), "minutes": round(minutes, 1), "threads": recipe.threads,
                        "torch": torch.__version__, "tower": tower_metrics, "language": lm_metrics}
        if eval_root is not None:
            from sparsezip.embedded.probe import compression_table, pope_table

            report["pope"] = pope_table(model, processor, eval_root)
            report["compression"] = compression_table(model, processor, eval_root)
    finally:
        torch.set_num_threads(threads)
    (out / "training_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(report), encoding="utf-8")
    return report


def model_card(report: dict) -> str:
    """The ``README.md`` written next to the weights: what the model is and is not, spec, recipe, time,
    and the measured accuracy (from ``report``, never typed in by hand)."""
    recipe = report["recipe"]
    spec = recipe["spec"]
    lines = [
        "# tiny-llava: the embedded sanity model of sparsezip",
        "",
        "A real `LlavaForConditionalGeneration` (CLIP-architecture vision tower with a CLS token, GELU projector,",
        "Llama-architecture LM, its own byte-level BPE tokenizer and `LlavaProcessor`), trained from scratch by",
        "`sparsezip train-tiny` on synthetic scenes of coloured shapes. Load it like llava-1.5-7b-hf:",
        "`LlavaForConditionalGeneration.from_pretrained(path)`, `AutoProcessor.from_pretrained(path)`.",
        "",
        "**What it is:** a sanity model for visual-token compression methods. It answers yes/no questions",
        "about 1-4 coloured shapes (existence, colour, count, position) from the LLaVA-1.5 evaluation prompt,",
        "and because it was actually trained, dropping the wrong visual tokens costs accuracy: attention-based",
        "selection can be told apart from random selection on it.",
        "",
        "**What it is not:** a vision-language model anyone should use. It knows 12 objects on 96 px images,",
        "cannot read (its DocVQA score is ~0 by construction), and says nothing about real-image accuracy.",
        "",
        "## Spec",
        "",
        f"- images {spec['image_size']} px, patches {spec['patch_size']} px = "
        f"{(spec['image_size'] // spec['patch_size']) ** 2} patch tokens + CLS; LLaVA reads layer -2, drops CLS",
        f"- vision tower: {spec['vision_layers']} layers, width {spec['vision_hidden']}, "
        f"MLP {spec['vision_intermediate']}, {spec['vision_heads']} heads (its last layer keeps its random init:",
        "  LLaVA reads layer -2, so training never runs it)",
        f"- language model: {spec['text_layers']} layers, width {spec['text_hidden']}, "
        f"MLP {spec['text_intermediate']}, {spec['text_heads']} heads, vocabulary {spec['vocab_size']}",
        "",
        "## Recipe",
        "",
        f"Seed {recipe['seed']}, {report['threads']} torch threads, {recipe['images']} training scenes "
        "(JPEG round trip as the fixtures), disjoint from the evaluation sets (other generator streams).",
        f"1. Vision tower, {recipe['tower_steps']} steps x {recipe['tower_batch']} images, AdamW lr "
        f"{recipe['tower_lr']}: per-patch object class (background weighted {recipe['background_weight']}) on",
        "   the layer -2 patch outputs, and which objects are present on the layer -2 CLS output.",
        f"2. Projector + LM (tower frozen), {recipe['lm_steps']} steps x {recipe['lm_batch_images']} images x "
        f"{recipe['questions_per_image']} questions, AdamW lr {recipe['lm_lr']}: yes/no",
        "   questions in the exact evaluation prompt, answer then `</s>`; existence negatives mostly share a",
        "   colour or shape with a present object (POPE-adversarial style), so colour and shape must be bound.",
        "   Fan-in initialisation, a projector that starts by standardising the layer -2 features, and",
        f"   auxiliary targets at the answer position (weight {recipe['aux_weight']}: which objects are present, how",
        "   many, what the question asks, where the named object is), via a linear head dropped afterwards.",
        "",
        f"Training time: {report['minutes']} min wall clock on the training machine's CPU (torch {report['torch']}). Same seed and",
        "thread count give the same weights.",
    ]
    if "pope" in report:
        lines += ["", "## Accuracy (synthetic POPE, all visual tokens, greedy first answer token)", "",
                  "| setting | accuracy | F1 | yes-ratio | n |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {m['accuracy']:.3f} | {m['f1']:.3f} | {m['yes_ratio']:.3f} | {m['n']} |"
                  for s, m in report["pope"].items()]
    if "compression" in report:
        lines += ["", "## Compression sanity (synthetic POPE adversarial)", "",
                  "Keep k patches by layer -2 CLS attention (top-k) or uniformly at random, then project and",
                  "answer; compare on F1 (pruning turns missing evidence into \"no\", which flatters accuracy).",
                  "", "| tokens | k | selection | accuracy | F1 | yes-ratio |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['fraction']} | {r['k']} | {r['selection']} | {r['accuracy']:.3f} | {r['f1']:.3f} | "
                  f"{r['yes_ratio']:.3f} |" for r in report["compression"]]
    return "\n".join(lines) + "\n"
