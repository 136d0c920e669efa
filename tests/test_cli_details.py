"""The smaller command-line fixes of issue 15 item 8: ``--limit`` needs only the images it runs, a BOM in a
predictions file, ``--batch-size`` help, committed fixtures never overwritten by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsezip.cli import build_parser, main
from sparsezip.commands import eval as eval_command
from sparsezip.testing.fake import FakeModelPlan, FakeVisionLanguageModel
from sparsezip.testing.trees import coco_name, write_tree


def test_limit_needs_only_the_images_of_the_selected_samples(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_tree("pope", "files", tmp_path / "data")
    (folder / "val2014" / coco_name(2)).unlink()  # the image of random questions 3 and 4
    monkeypatch.setattr(eval_command, "model_plan", lambda args: FakeModelPlan(FakeVisionLanguageModel()))
    args = ["eval", "--dataset", "pope-random", "--data", str(tmp_path / "data"), "--model-path", "fake",
            "--method", "none", "--no-progress"]
    assert main([*args, "--limit", "2", "--out", str(tmp_path / "two")]) == 0
    assert "2/2 samples" in capsys.readouterr().out
    assert main([*args, "--limit", "3", "--out", str(tmp_path / "three")]) == 2
    assert f"image file not found: {folder / 'val2014' / coco_name(2)} (sample 3 of coco_pope_random.json)" in (
        capsys.readouterr().err)
    assert not (tmp_path / "three").exists()


def test_a_byte_order_mark_in_a_predictions_file_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    label = write_tree("pope", "files", tmp_path) / "coco_pope_random.json"
    lines = "".join(json.dumps({"question_id": q, "prediction": "Yes"}) + "\n" for q in (1, 2, 3, 4))
    (tmp_path / "plain.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_text(lines, encoding="utf-8-sig")  # what Windows editors write
    results = []
    for name in ("plain.jsonl", "bom.jsonl"):
        assert main(["score", "--dataset", "pope", "--annotations", str(label), "--predictions",
                     str(tmp_path / name)]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["n"] == 4


def test_eval_batch_size_has_help_text() -> None:
    parser = build_parser()
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    action = next(a for a in eval_parser._actions if "--batch-size" in a.option_strings)
    assert action.help and "resume with the same value" in action.help


def test_train_tiny_help_states_the_recipes_own_step_defaults() -> None:
    from sparsezip.embedded.recipe import TrainRecipe

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train-tiny"]
    helps = {a.option_strings[0]: a.help for a in train._actions if a.option_strings}
    assert f"the recipe's {TrainRecipe().tower_steps}," in helps["--tower-steps"]
    assert f"the recipe's {TrainRecipe().lm_steps}," in helps["--lm-steps"]


@pytest.mark.parametrize(("command", "committed"), [(["make-fixtures"], "fixtures/data"),
                                                    (["train-tiny"], "fixtures/tiny-llava"),
                                                    (["train-tiny", "--arch", "llava-next"], "fixtures/tiny-llava-next"),
                                                    (["train-tiny", "--arch", "qwen2.5-vl"], "fixtures/tiny-qwen2.5-vl")])
def test_fixture_commands_write_the_committed_copy_only_when_forced(command: list[str], committed: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    written: list[str] = []
    monkeypatch.setattr("sparsezip.embedded.datasets.write_synthetic_sets",
                        lambda out, seed: written.append(str(out)) or {})
    monkeypatch.setattr("sparsezip.embedded.train.train_tiny",
                        lambda out, recipe, eval_root, family, **validation: written.append(f"{out}:{family.name}") or {"minutes": 0})
    assert main(command) == 2
    assert f"would overwrite the committed {committed}" in capsys.readouterr().err and written == []
    assert main([*command, "--out", "elsewhere"]) == 0
    assert main([*command, "--force"]) == 0
    if command[0] == "train-tiny":
        arch = command[-1] if "--arch" in command else "llava"
        assert written == [f"elsewhere:{arch}", f"{committed}:{arch}"]
    else:
        assert written == ["elsewhere", committed]


def test_an_interrupt_exits_130_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupting(FakeModelPlan):
        def load(self):
            raise KeyboardInterrupt

    write_tree("pope", "files", tmp_path / "data")
    monkeypatch.setattr(eval_command, "model_plan", lambda args: Interrupting(FakeVisionLanguageModel()))
    assert main(["eval", "--dataset", "pope-random", "--data", str(tmp_path / "data"), "--model-path", "fake",
                 "--method", "none", "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("sparsezip eval: interrupted") and err.count("\n") == 1
