"""Run folders that cannot be mixed or poisoned: the identity names everything that decides the answers, one
eval at a time holds a folder, a folder is claimed only by a run that stored something, and a full disk loses
nothing finished (issue 15 items 1, 2, 4, 5 and the --limit resume of item 8)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsezip.cli import main
from sparsezip.commands import eval as eval_command
from sparsezip.data import load_dataset
from sparsezip.eval import runner
from sparsezip.eval.rundir import LOCK_FILE, RUN_FILE, locked
from sparsezip.eval.runner import evaluate
from sparsezip.methods import get_method
from sparsezip.testing.fake import FakeModelPlan, FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree


@pytest.fixture
def pope(tmp_path: Path) -> list:
    return list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data")))


def run(samples: list, out: Path, model=None, method=None, **kwargs) -> dict:
    return evaluate(model or FakeVisionLanguageModel(), method or get_method("visionzip", budget=8), samples, out,
                    dataset="pope", progress=False, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (the lock file aside) and its bytes, to show that a refusal wrote nothing."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != LOCK_FILE}


def test_another_checkpoint_with_the_same_folder_name_is_refused(pope: list, tiny_llava_dir: Path,
                                                                 perturbed_tiny_llava_dir: Path,
                                                                 tmp_path: Path) -> None:
    run(pope[:3], tmp_path / "out", model=FakeVisionLanguageModel(checkpoint_path=tiny_llava_dir))
    config = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert len(config["checkpoint"]["weights"]) == 64 and "config.json" in config["checkpoint"]["files"]
    before = snapshot(tmp_path / "out")
    model = FakeVisionLanguageModel(checkpoint_path=perturbed_tiny_llava_dir)
    with pytest.raises(ValueError, match=r"holds a different run \(checkpoint\.weights: '[0-9a-f]{64}' -> "
                                         r"'[0-9a-f]{64}'\)"):
        run(pope, tmp_path / "out", model=model)
    assert model.generated == 0 and snapshot(tmp_path / "out") == before
    # a copy of the same weights elsewhere is the same model: the run continues
    same = shutil.copytree(tiny_llava_dir, tmp_path / "copy" / tiny_llava_dir.name)
    assert run(pope, tmp_path / "out", model=FakeVisionLanguageModel(checkpoint_path=same))["complete"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: setattr(m, "dtype", torch.float32), "dtype: 'float16' -> 'float32'"),
    (lambda m: setattr(m, "grid", 5), "model_settings.grid: 4 -> 5"),
    (lambda m: setattr(m, "chat_prompt", lambda q: f"USER: <image> {q} ASSISTANT:"), "prompt_template: "),
])  # fmt: skip
def test_dtype_settings_and_prompt_template_are_part_of_the_identity(pope: list, tmp_path: Path, change,
                                                                     message: str) -> None:
    run(pope[:2], tmp_path / "out", prompt_style="hf_chat")
    before = snapshot(tmp_path / "out")
    model = FakeVisionLanguageModel()
    change(model)
    with pytest.raises(ValueError, match=f"different run \\({message}"):
        run(pope, tmp_path / "out", model=model, prompt_style="hf_chat")
    assert snapshot(tmp_path / "out") == before


def test_library_versions_and_device_type_are_part_of_the_identity(pope: list, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run(pope[:2], tmp_path / "out")
    config = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert config["versions"] == {"torch": torch.__version__, "transformers": config["versions"]["transformers"]}
    assert config["device_type"] == "cpu" and config["dtype"] == "float16"
    assert "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:" in (
        config["prompt_template"])
    monkeypatch.setattr(runner, "library_versions", lambda: {**config["versions"], "transformers": "9.9.9"})
    with pytest.raises(ValueError, match=r"versions\.transformers: '[^']+' -> '9\.9\.9'"):
        run(pope, tmp_path / "out")
    monkeypatch.undo()
    # a run.json written before these fields existed cannot vouch for them: refused, the list kept short
    new_fields = ("checkpoint", "dtype", "device_type", "model_settings", "prompt_template", "versions")
    (tmp_path / "out" / RUN_FILE).write_text(json.dumps({k: v for k, v in config.items() if k not in new_fields}))
    with pytest.raises(ValueError, match=r"\(checkpoint: \(absent\) -> None; device_type: \(absent\) -> 'cpu'; "
                                         r".*; and 2 more\)"):
        run(pope, tmp_path / "out")


def test_the_cli_refuses_another_checkpoint_or_dtype_before_loading_it(tiny_llava_dir: Path,
                                                                      perturbed_tiny_llava_dir: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    write_tree("pope", "files", data)
    args = ["eval", "--dataset", "pope-random", "--data", str(data), "--method", "visionzip", "--budget", "16",
            "--no-progress", "--out", str(tmp_path / "out")]
    assert main([*args, "--model-path", str(tiny_llava_dir), "--limit", "2"]) == 0
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    assert main([*args, "--model-path", str(perturbed_tiny_llava_dir)]) == 2  # same folder name, other weights
    err = capsys.readouterr().err
    assert "checkpoint.weights: '" in err and err.count("\n") == 1 and "Traceback" not in err
    assert main([*args, "--model-path", str(tiny_llava_dir), "--dtype", "bfloat16"]) == 2
    assert "dtype: 'float32' -> 'bfloat16'" in capsys.readouterr().err
    assert snapshot(tmp_path / "out") == before
    assert main([*args, "--model-path", str(tiny_llava_dir)]) == 0  # the same model resumes
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 4


SLOW_EVAL = """
import sys, time
from sparsezip.data import load_dataset
from sparsezip.eval.runner import evaluate
from sparsezip.methods import get_method
from sparsezip.testing.fake import FakeVisionLanguageModel, default_answer

def slow_answer(image, question):
    time.sleep(1.0)
    return default_answer(image, question)

samples = list(load_dataset("pope", sys.argv[1]))
evaluate(FakeVisionLanguageModel(answer=slow_answer), get_method("none"), samples, sys.argv[2], dataset="pope",
         progress=False)
"""


def test_one_eval_at_a_time_and_a_killed_run_leaves_no_stale_lock(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = write_tree("pope", "files", tmp_path / "data"), tmp_path / "out"
    monkeypatch.setattr(eval_command, "model_plan", lambda args: FakeModelPlan(FakeVisionLanguageModel()))
    args = ["eval", "--dataset", "pope", "--data", str(data), "--model-path", "fake", "--method", "none",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "uninterrupted")]) == 0
    running = subprocess.Popen([sys.executable, "-c", SLOW_EVAL, str(data), str(out)])
    try:
        predictions = out / "predictions.jsonl"
        deadline = time.monotonic() + 120
        while not (predictions.is_file() and predictions.read_bytes().count(b"\n") >= 1):
            assert running.poll() is None and time.monotonic() < deadline, "the slow eval did not start"
            time.sleep(0.05)
        before = snapshot(out)
        assert main([*args, "--out", str(out)]) == 2  # a second eval on the same folder, at the same time
        err = capsys.readouterr().err
        assert f"{out} is in use: another sparsezip eval" in err and "Traceback" not in err
        assert running.poll() is None  # the refusal came at once, while the first run was still going
        after = snapshot(out)  # the first run's files, grown by it alone
        assert after.keys() == before.keys() and all(after[k].startswith(v) for k, v in before.items())
        running.send_signal(signal.SIGKILL)  # kill -9 mid-run: no chance to release anything
        running.wait(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == -signal.SIGKILL and (out / LOCK_FILE).exists()
    assert main([*args, "--out", str(out)]) == 0  # the lock died with its holder; the run resumes
    assert "7/7 samples" in capsys.readouterr().out
    assert predictions.read_bytes() == (tmp_path / "uninterrupted" / "predictions.jsonl").read_bytes()


def test_the_lock_is_reentrant_within_a_process(pope: list, tmp_path: Path) -> None:
    with locked(tmp_path / "out"):
        assert run(pope[:2], tmp_path / "out")["complete"]  # evaluate takes the same lock again
    with locked(tmp_path / "out"):
        pass  # and released it


def test_a_run_that_stores_nothing_does_not_claim_the_folder(pope: list, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(pope, out, model=FakeVisionLanguageModel(fail_after=0))  # fails at its first batch
    assert snapshot(out) == {}
    # the fixed command (another method) is free to use the folder
    assert run(pope, out, method=get_method("none"))["complete"]
    # a run.json without any stored result (a kill between writing it and the first batch) does not claim it
    stale = tmp_path / "stale"
    run(pope[:1], stale)
    (stale / "predictions.jsonl").write_bytes(b"")
    (stale / "summary.json").unlink()
    assert run(pope, stale, method=get_method("none"))["complete"]
    assert json.loads((stale / RUN_FILE).read_text())["method"] == "none"


def test_method_and_dataset_are_checked_against_the_model_before_the_folder(pope: list, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"method 'none' cannot run on model 'fake-vlm' \(16 visual tokens.*"
                                         r"budget=8"):
        run(pope, out, method=get_method("none", budget=8))
    with pytest.raises(ValueError, match=r"sparsevlm.*2 LLM layers.*too shallow"):
        shallow = FakeVisionLanguageModel()
        shallow.config.text_config.num_hidden_layers = 2
        run(pope, out, model=shallow, method=get_method("sparsevlm", budget=8))
    with pytest.raises(ValueError, match=r"'pool' cannot run.*budget=17 exceeds the 16 patches"):
        run(pope, out, method=get_method("pool", budget=17))
    empty = [*pope[:2], type(pope[2])(pope[2].id, pope[2].image_ref, "  ", pope[2].answers, pope[2].meta)]
    with pytest.raises(ValueError, match=r"pope: question 3 in coco_pope_random.json is empty"):
        run(empty, out, method=get_method("none"))  # `none` reads no question, yet it is a dataset error
    assert not out.exists()


def test_resuming_with_a_smaller_limit_says_so(pope: list, tmp_path: Path) -> None:
    run(pope, tmp_path / "out")
    with pytest.raises(ValueError, match=r"holds 7 records, up to sample 6, but this run selects only 3 samples "
                                         r"\(a smaller --limit"):
        run(pope[:3], tmp_path / "out")


def test_a_full_disk_stops_the_run_with_one_line_and_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_tree("pope", "files", data)
    monkeypatch.setattr(eval_command, "model_plan", lambda args: FakeModelPlan(FakeVisionLanguageModel()))
    args = ["eval", "--dataset", "pope", "--data", str(data / "pope"), "--model-path", "fake", "--method",
            "visionzip", "--budget", "8", "--batch-size", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    real_append, calls = runner.append_jsonl, []

    def disk_fills_at_the_third_batch(fh, records):
        calls.append(len(records))
        if len(calls) == 3:
            payload = b"".join(json.dumps(r).encode() + b"\n" for r in records)
            fh.write(payload[: len(payload) // 3])  # the part that fitted
            fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), fh.name)
        real_append(fh, records)

    monkeypatch.setattr(runner, "append_jsonl", disk_fills_at_the_third_batch)
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out / 'predictions.jsonl'}: No space left on device" in err and "(ENOSPC)" in err
    assert "the 4 sample(s) finished before are kept" in err
    monkeypatch.setattr(runner, "append_jsonl", real_append)  # space freed: the same command resumes
    with pytest.warns(UserWarning, match="torn last line"):
        assert main([*args, "--out", str(out)]) == 0
    full = (tmp_path / "full" / "predictions.jsonl").read_bytes()
    assert (out / "predictions.jsonl").read_bytes() == full
