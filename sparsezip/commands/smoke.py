"""``sparsezip smoke``: one image, one question, one method: token counts, stage times, the answer and a PNG
showing which patches were kept, merged or dropped. Runs with no arguments on a fresh clone."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sparsezip.commands._common import add_pad_argument, add_threads_argument

if TYPE_CHECKING:
    from PIL import Image

    from sparsezip.adapters.api import VisionLanguageModel

HELP = "answer one question about one image under a compression method, and draw what it kept"
DEFAULT_QUESTION = "Is there a red circle in the image?"
EMBEDDED_MODEL_NAME = "tiny-shapes"  # registered in sparsezip.adapters.registry (fixtures/tiny-llava)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, default=None, help="image file (default: a generated scene)")
    parser.add_argument("--prompt", default=DEFAULT_QUESTION, help="the question (wrapped in the llava_v1 template)")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="checkpoint directory or embedded model name (default: the embedded tiny-shapes, "
                             "fixtures/tiny-llava)")
    parser.add_argument("--method", default=None, help="registered method (default: sparsezip, else none)")
    parser.add_argument("--budget", type=int, default=None, help="token budget passed to the method")
    parser.add_argument("--clip-only", action="store_true", help="run the vision side only (no LLM, no answer)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", type=Path, default=Path("smoke-out"), help="folder for the PNG (default smoke-out)")
    add_pad_argument(parser)
    add_threads_argument(parser)


def demo_image(size: int = 336) -> Image.Image:
    """A deterministic scene: a red circle and a blue square on a light background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size * 0.12, size * 0.15, size * 0.45, size * 0.48), fill=(220, 30, 30))
    draw.rectangle((size * 0.55, size * 0.55, size * 0.88, size * 0.88), fill=(30, 60, 210))
    return image


def load_model(model_path: Path | None, device: str, pad: bool = True) -> tuple[VisionLanguageModel, str]:
    """The model to use and a line saying which one it is."""
    from sparsezip.adapters.llava import LlavaVLM
    from sparsezip.adapters.registry import embedded_model
    from sparsezip.adapters.registry import load_model as load_checkpoint

    options = {} if pad else {"pad": False}  # LLaVA-1.5's option; other families refuse it by name
    if model_path is not None:
        return load_checkpoint(model_path, device=device, **options), f"model: {model_path}"
    embedded = embedded_model(EMBEDDED_MODEL_NAME).path
    if (embedded / "config.json").is_file():
        return (load_checkpoint(EMBEDDED_MODEL_NAME, device=device, **options),
                f"model: embedded default {EMBEDDED_MODEL_NAME} ({embedded})")
    from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava

    model, processor = build_tiny_llava(TinyLlavaSpec(text_layers=4), seed=0)
    note = (f"model: a tiny RANDOM LLaVA ({embedded} not found; build it with `sparsezip train-tiny`): "
            "the pipeline runs, the answer is noise")
    return LlavaVLM(model.to(device), processor, name="tiny-random", pad=pad), note


def run(args: argparse.Namespace) -> int:
    from sparsezip.adapters.registry import parse_device
    from sparsezip.data.prompts import llava_v1_prompt
    from sparsezip.data.sample import open_image
    from sparsezip.imageprep import prepare_images
    from sparsezip.methods import get_method, list_methods
    from sparsezip.overlay import draw_token_overlay, tensor_to_image
    from sparsezip.threads import use_threads

    threads = use_threads(args.threads)
    if args.image is not None and not args.image.exists():
        raise ValueError(f"--image {args.image} does not exist")
    image = open_image(args.image) if args.image is not None else demo_image()
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file, not a folder")
    name = args.method or ("sparsezip" if "sparsezip" in list_methods() else "none")
    method = get_method(name) if args.budget is None else get_method(name, budget=args.budget)
    vlm, model_note = load_model(args.model_path, str(parse_device(args.device)), pad=not args.no_pad)
    print(model_note + f" (images: {getattr(vlm, 'image_aspect_ratio', 'processor default')})")
    print(f"method: {method!r}; torch threads: {threads}")
    prompt = llava_v1_prompt(args.prompt)

    prepared = vlm.prepare([image], [prompt], method=method, questions=[args.prompt])
    result = prepared.result
    one_view = result.tokens.shape[0] == 1  # LLaVA-1.5: one CLIP view per image (NeXT: crops; Qwen: no overlay)
    fed = int(result.lengths[0]) if one_view else int(prepared.visual[0])
    print(f"visual tokens: {int(prepared.uncompressed[0])} -> {fed} fed to the LLM"
          + (f" (k={int(result.k[0])})" if one_view else ""))
    if not args.clip_only:
        output = vlm.generate([image], [prompt], method=method, questions=[args.prompt],
                              max_new_tokens=args.max_new_tokens)[0]
        if output.visual_tokens_per_layer is not None:
            print(f"in-LLM pruning: per-layer visual tokens {output.visual_tokens_per_layer}, "
                  f"layer-averaged {output.visual_tokens:.2f}")
        print("stage times (ms): " + " | ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in output.timings.items()))
        print(f"answer ({output.new_tokens} tokens): {output.text!r}")
    else:
        print("stage times (ms): " + " | ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in prepared.timer.ms.items()))

    if not (one_view and hasattr(vlm, "processor")):
        print(f"overlay: not drawn for {type(vlm).__name__} (drawn for one CLIP view per image, as LLaVA-1.5)")
        return 0
    image_processor = vlm.processor.image_processor
    seen_image = prepare_images([image], image_processor, vlm.pad)
    pixels = image_processor(images=seen_image, return_tensors="pt")["pixel_values"][0]
    seen = tensor_to_image(pixels, list(image_processor.image_mean), list(image_processor.image_std))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"smoke-{name}.png"
    draw_token_overlay(seen, result.kept_index[0], result.assignment[0], prefix=vlm.prefix).save(path)
    print(f"overlay (outlined = kept, tint = contextual cluster joined, dark = dropped): {path}")
    return 0
