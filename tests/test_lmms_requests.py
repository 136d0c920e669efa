"""The lmms-eval bridge's plain-Python side (no lmms-eval needed): prompts, generation settings, batches,
cost records, the entry point and the shipped task files."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.adapters.api import STAGES, GenerationOutput
from sparsezip.data import load_dataset
from sparsezip.data.prompts import SHORT_ANSWER_SUFFIX
from sparsezip.data.prompts import build_prompt as runner_prompt
from sparsezip.integrations.lmms_eval import MODEL_NAME, TASKS_DIR
from sparsezip.integrations.lmms_eval.requests import (
    DEFAULT_MAX_NEW_TOKENS,
    bare_question,
    build_method,
    build_prompt,
    gen_kwargs_key,
    generation_settings,
    parse_batch_size,
    plan_batches,
    run_cost,
    sample_cost,
    truncate_at_stops,
)

REPO = Path(__file__).resolve().parents[1]
POPE_FILE = REPO / "fixtures" / "data" / "pope" / "coco_pope_adversarial.json"


def pope_context(question: str) -> str:
    """What lmms-eval's POPE ``doc_to_text`` returns with its default kwargs (no pre-prompt)."""
    return f"{question.strip()}\n{SHORT_ANSWER_SUFFIX}"


# ------------------------------------------------------------------------------------------------ prompts
def test_pope_prompt_is_the_runners_prompt() -> None:
    samples = list(load_dataset("pope", POPE_FILE))[:20]
    for s in samples:
        assert build_prompt(pope_context(s.question)) == runner_prompt("pope", s.question)
        assert bare_question(pope_context(s.question)) == s.question


def test_context_with_its_own_placeholder_keeps_it() -> None:
    prompt = build_prompt("Look: <image>\nWhat is it?")
    assert prompt.count("<image>") == 1 and "USER: Look: <image>\nWhat is it? ASSISTANT:" in prompt
    assert bare_question("<image>\nWhat is it?") == "What is it?"


def test_prompt_errors() -> None:
    with pytest.raises(ValueError, match="2 <image> placeholders"):
        build_prompt("<image> and <image>")
    with pytest.raises(ValueError, match="chat template"):
        build_prompt("q", "hf_chat")
    with pytest.raises(ValueError, match="unknown prompt_style 'vicuna'"):
        build_prompt("q", "vicuna")


def test_hf_chat_gets_the_context_without_placeholder() -> None:
    assert build_prompt("<image>\nWhat?", "hf_chat", chat_prompt=lambda q: f"[{q}]") == "[What?]"


# ------------------------------------------------------------------------------------------ gen_kwargs
def test_generation_settings_of_a_pope_request() -> None:
    pope = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
            "until": ["\n\n"]}  # fmt: skip
    assert generation_settings(pope) == generation_settings({**pope, "until": "\n\n"})
    s = generation_settings(pope)
    assert (s.max_new_tokens, s.num_beams, s.until) == (16, 1, ("\n\n",))
    assert generation_settings({}).max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert generation_settings({"until": None, "num_beams": 3}).until == ()
    assert generation_settings({"image_aspect_ratio": "original"}) == generation_settings({})


@pytest.mark.parametrize(
    ("gen_kwargs", "match"),
    [
        ({"do_sample": True}, "sampling requested"),
        ({"temperature": 0.7}, "sampling requested"),
        ({"repetition_penalty": 1.2}, r"\['repetition_penalty'\] are not supported"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
        ({"num_beams": 1.5}, "num_beams must be an integer >= 1, got 1.5"),
        ({"until": 3}, "until must be a string or a list of strings, got 3"),
    ],
)
def test_generation_settings_refuse(gen_kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generation_settings(gen_kwargs)


def test_truncate_at_stops() -> None:
    assert truncate_at_stops("Yes\n\nUSER: more", ["\n\n", "USER:"]) == "Yes"
    assert truncate_at_stops("No.", ["\n\n"]) == "No."
    assert truncate_at_stops("abc", ["", "c"]) == "ab"


def test_gen_kwargs_key_ignores_order() -> None:
    assert gen_kwargs_key({"a": 1, "until": ["x"]}) == gen_kwargs_key({"until": ["x"], "a": 1})
    assert gen_kwargs_key({"a": 1}) != gen_kwargs_key({"a": 2})


# ------------------------------------------------------------------------------------------ batches
@given(keys=st.lists(st.sampled_from("abc"), max_size=40), batch_size=st.integers(1, 7))
def test_plan_batches_covers_every_request_once(keys: list[str], batch_size: int) -> None:
    batches = plan_batches(keys, batch_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(keys)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({keys[i] for i in batch}) == 1  # one generation setting per batch
        assert batch == sorted(batch)  # request order kept inside a group


def test_plan_batches_matches_runner_batches_for_one_setting() -> None:
    assert plan_batches(["k"] * 10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        plan_batches(["k"], 0)


def test_parse_batch_size() -> None:
    assert parse_batch_size("8") == 8 and parse_batch_size(1) == 1
    for bad in ("auto", "auto:4", "0", -2):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            parse_batch_size(bad)


# ------------------------------------------------------------------------------------------ methods
def test_build_method_with_budget_and_sparsezip_config(tmp_path: Path) -> None:
    assert build_method("visionzip", 16).config()["budget"] == 16
    config = tmp_path / "sz.yaml"
    config.write_text("model:\n  sparsezip:\n    dominant: 10\n    merging: {contextual_num: 5}\n")
    method = build_method("sparsezip", None, config)
    assert method.config()["dominant"] == 10 and method.config()["merging"]["contextual_num"] == 5
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_method("nope")
    with pytest.raises(ValueError, match="budget must be an integer"):
        build_method("visionzip", "64")  # type: ignore[arg-type]
    config.write_text("model:\n  sparsezip:\n    dominnt: 10\n")
    with pytest.raises(ValueError, match="dominnt"):
        build_method("sparsezip", None, config)


# ------------------------------------------------------------------------------------------ costs
def output(visual: float, total_ms: float, batch: int, new: int = 2) -> GenerationOutput:
    timings = {stage: 1.0 for stage in STAGES} | {"total_ms": total_ms}
    return GenerationOutput("Yes", new, visual, 60, timings, batch_size=batch)


def test_run_cost_counts_each_batch_once() -> None:
    # A batch of two (100 ms, shared) and a batch of one (40 ms).
    costs = [sample_cost(o) for o in (output(16, 100, 2), output(18, 100, 2), output(14, 40, 1, new=5))]
    assert costs[0]["stage_ms"].keys() == set(STAGES) and costs[0]["batch_size"] == 2
    run = run_cost(costs, num_patches=144)
    assert run["total_elapsed_time"] == pytest.approx(0.14)
    assert run["total_gen_tokens"] == 9 and run["avg_speed"] == pytest.approx(9 / 0.14)
    extra = run["additional_metrics"]
    assert extra["total_requests"] == 3 and extra["sparsezip_num_patches"] == 144
    assert extra["sparsezip_visual_tokens"] == pytest.approx(16.0)
    assert extra["sparsezip_total_ms"] == pytest.approx(80.0)  # the per-sample mean, as summary.json's
    with pytest.raises(ValueError, match="no samples"):
        run_cost([], 144)


# ------------------------------------------------------------------------------------------ packaging
def test_entry_point_names_the_plugin() -> None:
    points = importlib.metadata.entry_points(group="lmms_eval.models")
    ours = [p for p in points if p.name == MODEL_NAME]
    assert [p.value for p in ours] == ["sparsezip.integrations.lmms_eval.plugin:manifest"]


class _TaskLoader(yaml.SafeLoader):
    """Reads the task YAML with lmms-eval's ``!function`` tags kept as their dotted names."""


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def test_shipped_tasks_point_at_the_embedded_pope() -> None:
    template = yaml.load((TASKS_DIR / "_sparsezip_pope_template_yaml").read_text(), Loader=_TaskLoader)
    assert template["dataset_path"] == "json" and template["test_split"] == "train"
    assert template["process_results"] == "!function lmms_eval.tasks.pope.utils.pope_process_results"
    tasks = sorted(TASKS_DIR.glob("sparsezip_pope_*.yaml"))
    assert [t.stem for t in tasks] == [f"sparsezip_pope_{c}" for c in ("adversarial", "popular", "random")]
    for task in tasks:
        config = yaml.load(task.read_text(), Loader=_TaskLoader)
        label_file = (TASKS_DIR / config["dataset_kwargs"]["data_files"]["train"]).resolve()
        assert label_file == REPO / "fixtures" / "data" / "pope" / f"coco_pope_{task.stem.rsplit('_', 1)[1]}.json"
        assert label_file.is_file() and config["include"] == "_sparsezip_pope_template_yaml"
