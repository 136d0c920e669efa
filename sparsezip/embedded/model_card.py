"""The model card (``README.md`` next to the weights) of a trained embedded model, written from its training
report: what it is and is not, spec, recipe, training time and the measured accuracy -- never typed by hand."""

from __future__ import annotations

from typing import NamedTuple


class FamilyCard(NamedTuple):
    """What a family's card says that the others' do not."""

    title: str
    intro: list[str]
    tokens: str  # how an image becomes visual tokens (format fields: S p n h c b g m)
    feature: str  # what the tower objectives and the projector read
    global_token: str  # what the presence objective reads
    unused_last_layer: bool  # the projector reads layer -2: the tower's last layer never trains


_FAMILIES: dict[str, FamilyCard] = {
    "llava": FamilyCard(
        "tiny-llava: the embedded sanity model of sparsezip",
        ["A real `LlavaForConditionalGeneration` (CLIP-architecture vision tower with a CLS token, GELU projector,",
         "Llama-architecture LM, its own byte-level BPE tokenizer and `LlavaProcessor`), trained from scratch by",
         "`sparsezip train-tiny` on synthetic scenes of coloured shapes and large-print forms. Load it like",
         "llava-1.5-7b-hf: `LlavaForConditionalGeneration.from_pretrained(path)`, `AutoProcessor.from_pretrained(path)`."],
        "images {S} px, patches {p} px = {n} patch tokens + CLS; LLaVA reads layer -2, drops CLS",
        "the layer -2 patch outputs", "the layer -2 CLS output", True,
    ),
    "llava-next": FamilyCard(
        "tiny-llava-next: the embedded LLaVA-NeXT of sparsezip",
        ["A real `LlavaNextForConditionalGeneration` (CLIP-architecture vision tower with a CLS token per crop, GELU",
         "projector, anyres packing with image-newline tokens, Llama-architecture LM with grouped-query attention,",
         "its own byte-level BPE tokenizer and `LlavaNextProcessor`), trained from scratch by",
         "`sparsezip train-tiny` by the same recipe on the same data as tiny-llava. Load it like",
         "llava-v1.6-*-hf: `LlavaNextForConditionalGeneration.from_pretrained(path)`."],
        "images {S} px as anyres: a base view shrunk to {h} px plus 2 x 2 tiles of {h} px, patches {p} px: "
        "5 crops x {c} patches (+ CLS each); in the LLM {b} base tokens + {n} tile tokens + {g} image-newline "
        "tokens; layer -2, CLS dropped per crop",
        "every crop's layer -2 patch outputs", "each crop's layer -2 CLS output (what the crop shows)", True,
    ),
    "qwen2.5-vl": FamilyCard(
        "tiny-qwen2.5-vl: the embedded Qwen2.5-VL of sparsezip",
        ["A real `Qwen2_5_VLForConditionalGeneration` (window-attention vision tower without CLS, 2D RoPE, the 2 x 2",
         "patch merger, Qwen2-architecture LM with M-RoPE and grouped-query attention, its own byte-level BPE",
         "tokenizer with Qwen's special tokens and chat template, and a `Qwen2VLImageProcessor`), trained from",
         "scratch by `sparsezip train-tiny` by the same recipe on the same data as tiny-llava.",
         "Load it like Qwen2.5-VL-*: `Qwen2_5_VLForConditionalGeneration.from_pretrained(path)` (tokenizer and image",
         "processor from the same folder)."],
        "images {S} px (dynamic resolution, at most {S} x {S}), patches {p} px = {n} tower patches, merged 2 x 2 "
        "into {m} LLM tokens; no CLS (the merger reads the last block)",
        "the last block's patch outputs (what the merger reads)", "their mean (no CLS)", False,
    ),
}


# Recipe settings ``sparsezip train-tiny`` takes on its command line, and the values of settings a report
# written before they existed trained with (the name targets were off).
COMMAND_LINE_SETTINGS: dict[str, str] = {"tower_steps": "--tower-steps", "lm_steps": "--lm-steps",
                                         "coordinate_weight": "--coordinate-weight", "name_weight": "--name-weight"}
SETTINGS_BEFORE_THEY_EXISTED: dict[str, object] = {"coordinate_weight": 0.0, "name_weight": 0.0}


def reproduce_command(report: dict) -> str:
    """The ``sparsezip train-tiny`` command line (markdown) that trains the report's model (recipe defaults left
    out; recipe settings the command line does not take are named)."""
    from sparsezip.embedded.recipe import TrainRecipe

    recipe = report["recipe"]
    family = report.get("family", "llava")
    parts = ["sparsezip train-tiny"]
    if family != "llava":
        parts.append(f"--arch {family}")
    parts.append(f"--out fixtures/{report.get('fixture', 'tiny-llava')} --seed {recipe['seed']}")
    default = TrainRecipe().to_json()
    recipe = {**SETTINGS_BEFORE_THEY_EXISTED, **recipe}
    for key, flag in COMMAND_LINE_SETTINGS.items():
        if recipe[key] != default[key]:
            parts.append(f"{flag} {recipe[key]}")
    command = f"`{' '.join(parts)}`"
    other = sorted(k for k in default if k not in ("seed", *COMMAND_LINE_SETTINGS) and recipe.get(k) != default[k])
    if other:  # settings the command line does not take: the recipe above has them
        command += f" (with {', '.join(other)} as in the recipe above)"
    return command


def model_card(report: dict) -> str:
    """The card's markdown from a :func:`sparsezip.embedded.train.train_tiny` report."""
    recipe = report["recipe"]
    spec = recipe["spec"]
    grid = spec["image_size"] // spec["patch_size"]
    card = _FAMILIES[report.get("family", "llava")]
    title, intro, tokens, feature, global_token, last_layer = card
    half = spec["image_size"] // 2
    tokens = tokens.format(S=spec["image_size"], p=spec["patch_size"], n=grid * grid, h=half,
                           c=(half // spec["patch_size"]) ** 2, b=(half // spec["patch_size"]) ** 2, g=grid,
                           m=grid * grid // 4)
    lines = [
        f"# {title}",
        "",
        *intro,
        "",
        "**What it is:** a sanity model for visual-token compression methods. It answers yes/no questions",
        "about 1-4 coloured shapes (existence, colour of a shape or of a quadrant, count, position of one object",
        "or of two relative to each other) and reads one field of a form (title, `NO` number, `TO` city or `BY`",
        "name; every word from a closed vocabulary of 40), in the LLaVA-1.5 evaluation protocol (vicuna_v1",
        "prompt, images padded to a square of the mean colour). Because it was actually trained, dropping the",
        "wrong visual tokens costs accuracy: attention-based selection can be told apart from random on it,",
        "and questions about one region or one field make question-aware selection measurable.",
        "",
        "**What it is not:** a vision-language model anyone should use. It knows 12 objects and 40 words on",
        f"{spec['image_size']} px images; its \"reading\" is recognising those words (each a single token of its",
        "tokenizer), not reading text, and it says nothing about real-image accuracy.",
        "",
        "## Spec",
        "",
        f"- {tokens}",
        f"- vision tower: {spec['vision_layers']} layers, width {spec['vision_hidden']}, "
        f"MLP {spec['vision_intermediate']}, {spec['vision_heads']} heads"
        + (" (its last layer keeps its random init: the projector reads layer -2, so training never runs it)"
           if last_layer else ""),
        f"- language model: {spec['text_layers']} layers, width {spec['text_hidden']}, "
        f"MLP {spec['text_intermediate']}, {spec['text_heads']} heads, vocabulary {spec['vocab_size']}",
        "- why this size: documents are 4:3 pages padded to a square and shrunk 4x, so a capital is ~12 px tall",
        "  and ~10 px wide, about two 8 px patches: readable at 96 px without more tokens (more tokens would",
        "  make training and the test suite slower); the vocabulary grew from 512 to hold every document word",
        "  as one token",
        "",
        "## Recipe",
        "",
        f"Seed {recipe['seed']}, {report['threads']} torch threads, {recipe['images']} training images "
        f"({recipe['document_share']:.0%} documents, the rest scenes with the fixtures' JPEG round trip), "
        "disjoint from the evaluation sets (other generator streams), prepared as the adapter prepares",
        "evaluation images (`sparsezip.imageprep.prepare_images`: pad to a square of the mean colour).",
        f"1. Vision tower, {recipe['tower_steps']} steps x {recipe['tower_batch']} images, AdamW lr "
        f"{recipe['tower_lr']}: per-patch object or word class (background weighted "
        f"{recipe['background_weight']}) and per-patch row and column (weight {recipe['position_weight']}"
        + (f"; and the x / y coordinate regressed linearly, weight {recipe['coordinate_weight']}"
           if recipe.get("coordinate_weight") else "") + ") on",
        f"   {feature}; which objects and words are present on {global_token}.",
        f"2. Projector + LM (tower frozen), {recipe['lm_steps']} steps x {recipe['lm_batch_images']} images x "
        f"{recipe['questions_per_image']} questions, AdamW lr {recipe['lm_lr']}: questions",
        "   in the exact evaluation prompt, answer (`Yes`/`No`, or the field's word) then EOS; "
        f"{recipe.get('existence_share', 0.4):.0%} of the scene",
        "   questions ask whether an object is there, and their negatives mostly share a colour or shape with a",
        "   present object (POPE-adversarial style); the rest ask colour, count and position. Fan-in",
        "   initialisation, a projector that starts by standardising the features it reads, and auxiliary",
        f"   targets at the answer position (weight {recipe['aux_weight']}: what is present, what the question",
        "   asks, where the named objects or region are, which field and word), via a linear head dropped afterwards.",
        *([f"   Name targets (weight {recipe['name_weight']}): at the last token of each object a question names, "
           "half-way up the LM,", "   whether that object is there and which column and row eighth its centre "
           "is in (a head dropped afterwards)."] if recipe.get("name_weight") else []),
        "",
        f"Training time: {report['minutes']} min wall clock on the training machine's CPU (torch {report['torch']}; "
        "a shared 2-core",
        "machine). Same seed and thread count give the same weights:",
        f"{reproduce_command(report)}.",
    ]
    if "tasks" in report:
        lines += ["", "## Accuracy per task (all visual tokens, through the adapter and runner)", "",
                  f"What `sparsezip eval --data fixtures/data --model-path fixtures/{report.get('fixture', 'tiny-llava')} "
                  "--method none` gives:",
                  "", "| task | metric | value | n |", "|---|---|---|---|"]
        for name, m in report["tasks"].items():
            if name.startswith("pope"):
                lines.append(f"| {name} | F1 (accuracy, yes-ratio) | {m['f1']:.3f} ({m['accuracy']:.3f}, "
                             f"{m['yes_ratio']:.3f}) | {m['n']} |")
            elif name == "mme":
                for sub, s in m["subtasks"].items():
                    lines.append(f"| mme {sub} | accuracy (score of 200) | {s['acc'] / 100:.3f} ({s['score']:.1f}) | |")
            else:
                lines.append(f"| {name} | ANLS (exact match) | {m['anls']:.3f} ({m['exact_match']:.3f}) | {m['n']} |")
    if "compression" in report:
        lines += ["", "## Compression sanity (synthetic POPE adversarial, standalone probe)", "",
                  "Keep k patches by layer -2 CLS attention (top-k) or uniformly at random, then project and",
                  "answer (greedy first token, `sparsezip/embedded/probe.py`); compare on F1 (pruning turns",
                  "missing evidence into \"no\", which flatters accuracy).",
                  "", "| tokens | k | selection | accuracy | F1 | yes-ratio |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['fraction']} | {r['k']} | {r['selection']} | {r['accuracy']:.3f} | {r['f1']:.3f} | "
                  f"{r['yes_ratio']:.3f} |" for r in report["compression"]]
    return "\n".join(lines) + "\n"
