"""CPU latency of the LLaVA adapter on a width-scaled LLaVA-1.5 (not a test: numbers, not pass/fail).

Model: ``WIDTH_SCALED_LLAVA15`` with 3 decoder layers: the full CLIP ViT-L/14-336 tower (random weights) and a
Llama of hidden 4096 / intermediate 11008, but 3 layers instead of 32 (3 is the fewest SparseVLM's three pruning
layers fit in). Random weights answer nothing, so only time is measured; every method generates the same
number of tokens (recorded in ``extra_info``: answer length dominates end-to-end time).

* ``test_prefill_576_vs_64_visual_tokens``: the LLM's prefill forward alone, 576 vs 64 visual tokens.
* ``test_end_to_end_per_method_at_64_tokens``: ``LlavaVLM.generate`` for every registered method at budget 64
  (``none`` keeps 576), as ratios to ``none``: total, prefill, and LLM (prefill + decode). Prefill here includes
  the projector, which runs on every kept token. With 3 of 32 layers the vision tower is a far larger share of
  the time than in the real 7B model, so the total ratios understate what pruning saves there.

Variants are timed round-robin inside each pytest-benchmark round so that load on a shared machine hits them
alike; medians and ratios go to ``extra_info``. Run (a few minutes on 2 busy cores)::

    PYTHONPATH=. pytest benchmarks/test_adapter_speed.py --benchmark-enable -p no:cacheprovider -s
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from sparsezip.adapters.llava import LlavaVLM
from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.embedded.models import WIDTH_SCALED_LLAVA15, build_tiny_llava
from sparsezip.methods import get_method, list_methods
from sparsezip.testing.methods import KeepFirst

LM_LAYERS = 3
BUDGET = 64
NEW_TOKENS = 4
ROUNDS = 2


@pytest.fixture(scope="module")
def vlm() -> LlavaVLM:
    model, processor = build_tiny_llava(dataclasses.replace(WIDTH_SCALED_LLAVA15, text_layers=LM_LAYERS), seed=0)
    return LlavaVLM(model, processor, name=f"width-scaled-llava15-{LM_LAYERS}L")


@pytest.fixture(scope="module")
def sample():
    from sparsezip.commands.smoke import demo_image

    return [demo_image()], [llava_v1_prompt("Is there a red circle in the image?")]


def _round_robin(variants: dict[str, Callable[[], object]], samples: dict[str, list[float]]) -> None:
    for name, run in variants.items():
        start = time.perf_counter()
        run()
        samples[name].append((time.perf_counter() - start) * 1e3)


def test_prefill_576_vs_64_visual_tokens(benchmark, vlm: LlavaVLM, sample) -> None:
    images, prompts = sample
    prepared = {
        "576": vlm.prepare(images, prompts, method=get_method("none")),
        str(BUDGET): vlm.prepare(images, prompts, method=KeepFirst(BUDGET)),
    }

    def prefill(batch) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return vlm.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                 logits_to_keep=1)
        return run

    variants = {name: prefill(batch) for name, batch in prepared.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    benchmark.pedantic(_round_robin, args=(variants, samples), rounds=ROUNDS + 1, warmup_rounds=0)
    medians = {name: statistics.median(times[1:]) for name, times in samples.items()}  # round 1 = warm-up
    benchmark.extra_info.update({
        "model": vlm.name,
        "prefill_tokens": {name: int(b.attention_mask.sum()) for name, b in prepared.items()},
        "prefill_ms_median": medians,
        "prefill_ms_all": samples,
        f"ratio_{BUDGET}_to_576": medians[str(BUDGET)] / medians["576"],
    })
    print(f"\nprefill ms (median of {ROUNDS}): {medians}; ratio {medians[str(BUDGET)] / medians['576']:.3f}")


def test_end_to_end_per_method_at_64_tokens(benchmark, vlm: LlavaVLM, sample) -> None:
    images, prompts = sample
    questions = ["Is there a red circle in the image?"]
    methods = {"none": get_method("none")}
    methods.update({name: get_method(name, budget=BUDGET) for name in list_methods() if name != "none"})
    outputs: dict[str, list] = {name: [] for name in methods}

    def run(name: str) -> Callable[[], object]:
        def call() -> object:
            out = vlm.generate(images, prompts, method=methods[name], questions=questions, max_new_tokens=NEW_TOKENS)
            outputs[name].append(out[0])
            return out
        return call

    samples: dict[str, list[float]] = {name: [] for name in methods}
    benchmark.pedantic(_round_robin, args=({n: run(n) for n in methods}, samples), rounds=ROUNDS, warmup_rounds=0)
    table = {}
    for name, outs in outputs.items():
        stages = {k: statistics.median(o.timings[k] for o in outs) for k in outs[0].timings}
        table[name] = {
            **stages,
            "llm_ms": stages["prefill_ms"] + stages["decode_ms"],
            "rounds": [o.timings for o in outs],
            "visual_tokens": outs[0].visual_tokens,
            "visual_tokens_per_layer": outs[0].visual_tokens_per_layer,
            "new_tokens": [o.new_tokens for o in outs],
        }
    for row in table.values():
        row["total_ratio_to_none"] = row["total_ms"] / table["none"]["total_ms"]
        row["prefill_ratio_to_none"] = row["prefill_ms"] / table["none"]["prefill_ms"]
        row["llm_ratio_to_none"] = row["llm_ms"] / table["none"]["llm_ms"]
    benchmark.extra_info.update({"model": vlm.name, "budget": BUDGET, "max_new_tokens": NEW_TOKENS, "methods": table})
    print(f"\n{'method':<11} {'visual':>7} {'vision':>8} {'compress':>9} {'prefill':>8} {'decode':>8} {'total':>8} "
          f"{'total/none':>10} {'prefill/none':>12} {'llm/none':>9} new_tokens")
    for name, row in table.items():
        print(f"{name:<11} {row['visual_tokens']:>7.1f} {row['vision_ms']:>8.0f} {row['compress_ms']:>9.1f} "
              f"{row['prefill_ms']:>8.0f} {row['decode_ms']:>8.0f} {row['total_ms']:>8.0f} "
              f"{row['total_ratio_to_none']:>10.3f} {row['prefill_ratio_to_none']:>12.3f} "
              f"{row['llm_ratio_to_none']:>9.3f} {row['new_tokens']}")
