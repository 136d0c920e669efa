"""The runner with a fake model: outputs, resume after a crash or a torn line, config checks, shards + merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.data import load_dataset
from sparsezip.data.records import score_records
from sparsezip.data.subsets import limit_samples
from sparsezip.eval.rundir import merge_runs
from sparsezip.eval.runner import evaluate
from sparsezip.eval.summary import summarize
from sparsezip.methods import get_method
from sparsezip.methods.base import CompressionMethod
from sparsezip.testing.fake import FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree


class KeepFirst(CompressionMethod):
    """Keeps the first ``k`` patches (deliberately not registered: it must not join the method matrix)."""

    name = "keep-first"

    def __init__(self, k: int = 4) -> None:
        self.k = k

    def compress(self, ctx: VisionContext) -> CompressionResult:
        b = ctx.batch_size
        index = torch.arange(1, self.k + 1).expand(b, -1)
        assignment = torch.full((b, ctx.num_tokens), -1)
        assignment[:, 1 : self.k + 1] = torch.arange(self.k)
        k = torch.full((b,), self.k)
        return CompressionResult(ctx.hidden[:, 1 : self.k + 1], k.clone(), index, assignment, k)

    def config(self) -> dict:
        return {"k": self.k}


@pytest.fixture
def pope(tmp_path: Path) -> list:
    """7 POPE samples over two categories (ids repeat across them)."""
    return list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data")))


@pytest.fixture
def mme(tmp_path: Path) -> list:
    return list(load_dataset("mme", write_tree("mme", "files", tmp_path / "data")))


def run(samples: list, out: Path, dataset: str = "pope", model=None, method=None, **kwargs) -> dict:
    return evaluate(model or FakeVisionLanguageModel(), method or KeepFirst(), samples, out, dataset=dataset,
                    progress=False, **kwargs)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_outputs(pope: list, tmp_path: Path) -> None:
    summary = run(pope, tmp_path / "out", batch_size=3)
    records = read(tmp_path / "out" / "predictions.jsonl")
    assert [(r["index"], r["category"], r["question_id"]) for r in records] == [
        (i, s.meta["category"], s.id) for i, s in enumerate(pope)]
    first = records[0]
    assert first["prediction"] in ("Yes", "No") and first["answers"] == ["yes"]
    assert first["visual_tokens"] == 4.0 and first["new_tokens"] == 2 and first["batch_size"] == 3
    assert set(first["timings"]) == {"vision_ms", "compress_ms", "prefill_ms", "decode_ms", "total_ms"}
    assert summary == json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] and summary["n"] == summary["expected"] == 7
    assert summary["metrics"] == score_records("pope", records)
    assert set(summary["metrics"]) == {"categories", "mean_f1", "pooled"}
    assert summary["tokens"]["visual"] == {"mean": 4.0, "min": 4.0, "max": 4.0}
    assert summary["tokens"]["max_new_tokens"] == 16 and summary["tokens"]["new_tokens_mean"] == 2.0
    assert summary["latency_ms"]["total_ms"]["median"] == pytest.approx(1.0 + 0.5 + 0.04 + 4.0)
    # 16 patches - 4 kept = 12 tokens x (2 x 32 layers x 4096 hidden x 2 bytes)
    assert summary["memory"]["kv_cache_saved_bytes_per_sample"] == 12 * 2 * 32 * 4096 * 2
    assert summary["memory"]["peak_bytes"] > 0 and summary["memory"]["peak_kind"] == "cpu_rss_high_water"
    env = summary["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["transformers"]
    config = summary["config"]
    assert config["method_config"] == {"k": 4} and config["prompt_style"] == "llava_v1"
    assert set(config["sources"]) == {"coco_pope_random.json", "coco_pope_adversarial.json"}


def test_prompts_and_questions_reach_the_model(mme: list, tmp_path: Path) -> None:
    model = FakeVisionLanguageModel()
    run(mme[:2], tmp_path / "a", dataset="mme", model=model)
    assert model.calls[0][0].endswith("USER: <image>\nAre there two dogs?\nAnswer the question using a single "
                                      "word or phrase. ASSISTANT:")
    chat = FakeVisionLanguageModel()
    run(mme[:2], tmp_path / "b", dataset="mme", model=chat, prompt_style="hf_chat")
    assert chat.calls[0][0] == "USER: <image>\nAre there two dogs?\nAnswer the question using a single word or phrase. ASSISTANT:"


@pytest.mark.parametrize("batch_size", [1, 2])
def test_resume_after_a_crash_gives_the_uninterrupted_file(pope: list, tmp_path: Path, batch_size: int) -> None:
    run(pope, tmp_path / "full", batch_size=batch_size)
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(pope, tmp_path / "resumed", model=FakeVisionLanguageModel(fail_after=4), batch_size=batch_size)
    assert len(read(tmp_path / "resumed" / "predictions.jsonl")) == 4
    assert not (tmp_path / "resumed" / "summary.json").exists()
    model = FakeVisionLanguageModel()
    run(pope, tmp_path / "resumed", model=model, batch_size=batch_size)
    assert model.generated == 3  # finished samples are not redone
    full = (tmp_path / "full" / "predictions.jsonl").read_bytes()
    assert (tmp_path / "resumed" / "predictions.jsonl").read_bytes() == full
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["metrics"] == json.loads(
        (tmp_path / "full" / "summary.json").read_text())["metrics"]


def test_a_torn_last_line_is_dropped_and_redone(pope: list, tmp_path: Path) -> None:
    run(pope, tmp_path / "out")
    path = tmp_path / "out" / "predictions.jsonl"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 25])  # killed mid-write of the last record
    model = FakeVisionLanguageModel()
    with pytest.warns(UserWarning, match="torn last line"):
        run(pope, tmp_path / "out", model=model)
    assert model.generated == 1 and path.read_bytes() == full
    # a malformed line that is not the last one is corruption, not a torn write
    lines = full.split(b"\n")
    lines[2] = b'{"index": 2, "broken'
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"predictions.jsonl:3: malformed JSON line"):
        run(pope, tmp_path / "out")


def test_a_corrupt_image_stops_the_run_with_finished_batches_kept(pope: list, tmp_path: Path) -> None:
    bad = pope[2].image_ref  # image 2: samples 2, 3 and 6
    original = bad.read_bytes()
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="corrupt or unreadable image"):
        run(pope, tmp_path / "out", batch_size=2)
    assert len(read(tmp_path / "out" / "predictions.jsonl")) == 2  # batch 0-1 finished, batch 2-3 failed
    bad.write_bytes(original)
    assert run(pope, tmp_path / "out", batch_size=2)["complete"]


def test_a_different_run_in_the_same_folder_is_refused(pope: list, mme: list, tmp_path: Path) -> None:
    run(pope[:2], tmp_path / "out")
    # the differing field is named by its dotted path, with both values (not the two whole dicts)
    with pytest.raises(ValueError, match=r"different run \(method_config\.k: 4 -> 2\)"):
        run(pope[:2], tmp_path / "out", method=KeepFirst(2))
    with pytest.raises(ValueError, match="max_new_tokens: 16 -> 8"):
        run(pope[:2], tmp_path / "out", max_new_tokens=8)
    with pytest.raises(ValueError, match="dataset"):
        run(mme, tmp_path / "out", dataset="mme")
    with pytest.raises(ValueError, match="method: 'keep-first' -> 'none'"):
        run(pope[:2], tmp_path / "out", method=get_method("none"))
    # a larger --limit of the same run continues it, even into another label file
    assert run(pope, tmp_path / "out")["n"] == 7
    label = tmp_path / "data" / "pope" / "coco_pope_random.json"
    label.write_text(label.read_text().replace("dog", "wolf"))
    changed = list(load_dataset("pope", label.parent))
    with pytest.raises(ValueError, match=r"annotation file\(s\) \['coco_pope_random.json'\] changed"):
        run(changed, tmp_path / "out")


def test_records_from_another_dataset_are_refused(pope: list, tmp_path: Path) -> None:
    run(pope, tmp_path / "out")
    path = tmp_path / "out" / "predictions.jsonl"
    record = read(path)[0] | {"question_id": 999}
    path.write_text(path.read_text() + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="not sample 0 of this dataset"):
        run(pope, tmp_path / "out")


@pytest.mark.parametrize(("count", "batch_size"), [(2, 1), (3, 1), (3, 2)])
def test_shards_merge_to_the_unsharded_run(mme: list, tmp_path: Path, count: int, batch_size: int) -> None:
    samples = limit_samples(mme, 6)
    unsharded = run(samples, tmp_path / "all", dataset="mme", batch_size=batch_size)
    shards = [tmp_path / f"shard{i}" for i in range(count)]
    for i, out in enumerate(shards):
        summary = run(samples, out, dataset="mme", batch_size=batch_size, shard=(i, count))
        ids = [r["question_id"] for r in read(out / "predictions.jsonl")]
        assert len(ids) == summary["n"] and len(ids) % 2 == 0  # MME pairs stay together
    merged = merge_runs(list(reversed(shards)), tmp_path / "merged")
    whole, joined = read(tmp_path / "all" / "predictions.jsonl"), read(tmp_path / "merged" / "predictions.jsonl")
    if batch_size == 1:
        assert joined == whole
    # batch composition differs between shards, so only batch_size may differ
    assert [{k: v for k, v in r.items() if k != "batch_size"} for r in joined] == [
        {k: v for k, v in r.items() if k != "batch_size"} for r in whole]
    assert merged["metrics"] == unsharded["metrics"] and merged["n"] == 6 and merged["complete"]
    assert merged["config"] == unsharded["config"]


def test_merge_refuses_bad_shard_sets(pope: list, tmp_path: Path) -> None:
    for i in range(2):
        run(pope, tmp_path / f"s{i}", shard=(i, 2))
    with pytest.raises(ValueError, match=r"each of the 2 shards exactly once; got \[0, 0\]"):
        merge_runs([tmp_path / "s0", tmp_path / "s0"], tmp_path / "m")
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        merge_runs([tmp_path / "s0"], tmp_path / "m")
    run(pope, tmp_path / "other", shard=(1, 2), method=KeepFirst(2))
    with pytest.raises(ValueError, match="different run"):
        merge_runs([tmp_path / "s0", tmp_path / "other"], tmp_path / "m")
    with pytest.raises(RuntimeError):
        run(pope, tmp_path / "crashed", shard=(1, 2), model=FakeVisionLanguageModel(fail_after=1))
    with pytest.raises(ValueError, match=r"no summary.json"):
        merge_runs([tmp_path / "s0", tmp_path / "crashed"], tmp_path / "m")
    run(pope, tmp_path / "unsharded")
    with pytest.raises(ValueError, match="not a shard run"):
        merge_runs([tmp_path / "unsharded"], tmp_path / "m")


def test_summary_of_an_in_llm_method_reports_per_layer_means(pope: list, tmp_path: Path) -> None:
    run(pope[:2], tmp_path / "out")
    records = read(tmp_path / "out" / "predictions.jsonl")
    records[0]["visual_tokens_per_layer"] = [576, 309, 113]
    records[1]["visual_tokens_per_layer"] = [576, 305, 111]
    config = json.loads((tmp_path / "out" / "run.json").read_text())
    summary = summarize(config, records, expected=2, peak=(1, "x"), environment={}, kv_bytes_per_token=None)
    assert summary["tokens"]["visual_per_layer_mean"] == [576.0, 307.0, 112.0]
    assert summary["memory"]["kv_cache_saved_bytes_per_sample"] is None


def test_kv_bytes_saved_use_each_records_own_uncompressed_count(pope: list, tmp_path: Path) -> None:
    run(pope[:3], tmp_path / "out")
    records = read(tmp_path / "out" / "predictions.jsonl")
    assert [r["uncompressed_visual_tokens"] for r in records] == [16, 16, 16]  # the fake's 4 x 4 grid
    # Images of different sizes (LLaVA-NeXT): 20 and 10 tokens uncompressed; a record without the field
    # (an older run) counts the run's nominal 16.
    records[0]["uncompressed_visual_tokens"], records[1]["uncompressed_visual_tokens"] = 20, 10
    del records[2]["uncompressed_visual_tokens"]
    config = json.loads((tmp_path / "out" / "run.json").read_text())
    summary = summarize(config, records, expected=3, peak=(1, "x"), environment={}, kv_bytes_per_token=2.0)
    assert summary["tokens"]["uncompressed_mean"] == pytest.approx((20 + 10 + 16) / 3)
    assert summary["memory"]["kv_cache_saved_bytes_per_sample"] == pytest.approx((16 + 6 + 12) / 3 * 2.0)


def test_a_model_without_cls_runs_every_method_on_its_patches(pope: list, tmp_path: Path) -> None:
    model = FakeVisionLanguageModel(prefix=0)
    for name, visual in (("none", 16.0), ("visionzip", 8.0), ("random", 8.0), ("pool", 8.0)):
        budget = None if name == "none" else 8
        summary = run(pope[:2], tmp_path / name, model=model, method=get_method(name, budget=budget))
        assert summary["tokens"]["visual"]["mean"] == visual and summary["tokens"]["uncompressed_mean"] == 16.0
