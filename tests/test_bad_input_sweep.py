"""Bad input through the command line, kind by kind (issue 15 items 5, 6 and 8): each ends with exit status 2
and one line that names the bad thing -- no traceback, no weights loaded, and no run folder claimed."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers
from PIL import Image

from sparsezip.cli import main
from sparsezip.testing.trees import coco_name, write_tree

CheckpointFiles = ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
                   "chat_template.jinja", "generation_config.json")


def checkpoint(folder: Path, source: Path, *, weights: bool = True, processor: bool = True, **config: object) -> str:
    """A checkpoint folder like ``source`` with ``config`` changes, optionally without weights or processor files."""
    folder.mkdir(parents=True)
    for name in CheckpointFiles:
        if (source / name).is_file() and (processor or name in ("config.json", "generation_config.json")):
            shutil.copy(source / name, folder / name)
    settings = json.loads((source / "config.json").read_text())
    for key, value in config.items():
        if isinstance(value, dict):
            settings[key] = {**settings.get(key, {}), **value}
        else:
            settings[key] = value
    (folder / "config.json").write_text(json.dumps(settings))
    if weights:
        (folder / "model.safetensors").symlink_to(source / "model.safetensors")
    return str(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: Path) -> SimpleNamespace:
    """Every bad thing, built once: data trees, broken checkpoints, files."""
    root = tmp_path_factory.mktemp("sweep")
    w = SimpleNamespace(root=root, model=str(tiny_llava_dir))
    w.data = root / "data"
    for family in ("pope", "mme", "docvqa"):
        write_tree(family, "files", w.data)
    w.a_file = root / "a-file"
    w.a_file.write_text("not a folder")
    w.no_weights = checkpoint(root / "no-weights", tiny_llava_dir, weights=False)
    w.truncated = checkpoint(root / "truncated", tiny_llava_dir, weights=False)
    (root / "truncated" / "model.safetensors").write_bytes((tiny_llava_dir / "model.safetensors").read_bytes()[:500])
    w.no_processor = checkpoint(root / "no-processor", tiny_llava_dir, processor=False)
    w.layer_list = checkpoint(root / "layer-list", tiny_llava_dir, vision_feature_layer=[-2, -1])
    w.llama = root / "llama"
    w.llama.mkdir()
    (w.llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    w.shallow = checkpoint(root / "shallow", tiny_llava_dir, text_config={"num_hidden_layers": 2})
    w.bad_yaml = root / "bad.yaml"
    w.bad_yaml.write_text("model: [unclosed\n")
    # a POPE tree whose second question is empty, and one whose second image is gone
    w.empty_question = write_tree("pope", "files", root / "empty-q")
    label = w.empty_question / "coco_pope_random.json"
    lines = label.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "text": "   "})
    label.write_text("\n".join(lines) + "\n")
    w.missing_image = write_tree("pope", "files", root / "missing-image")
    (w.missing_image / "val2014" / coco_name(2)).unlink()
    w.bad_parquet = root / "bad-parquet" / "docvqa"
    (w.bad_parquet / "data").mkdir(parents=True)
    (w.bad_parquet / "data" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 but not really a parquet file")
    # predictions files
    w.label = w.data / "pope" / "coco_pope_random.json"
    w.null_id = root / "null-id.jsonl"
    w.null_id.write_text('{"question_id": null, "prediction": "Yes"}\n')
    w.latin1 = root / "latin1.jsonl"
    w.latin1.write_bytes(b'{"question_id": 1, "prediction": "caf\xe9"}\n')
    w.preds = root / "preds.jsonl"
    w.preds.write_text("".join(json.dumps({"question_id": q, "prediction": "Yes"}) + "\n" for q in (1, 2, 3, 4)))
    # images
    w.empty_png = root / "empty.png"
    w.empty_png.write_bytes(b"")
    w.truncated_png = root / "truncated.png"
    noise = Image.effect_noise((64, 64), 64).convert("RGB")  # incompressible, so half the file is half the pixels
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    w.truncated_png.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return w


def eval_args(w: SimpleNamespace, out: Path, *changes: str, **options: str) -> list[str]:
    """``sparsezip eval`` on the good data and model, with ``options`` replacing / adding flags."""
    flags = {"--dataset": "pope-random", "--data": str(w.data), "--model-path": w.model, "--method": "visionzip",
             "--budget": "16", "--out": str(out)}
    flags.update({f"--{k.replace('_', '-')}": v for k, v in options.items()})
    return ["eval", *[x for kv in flags.items() for x in kv], "--no-progress", *changes]


def score_args(w: SimpleNamespace, **options: str) -> list[str]:
    flags = {"--dataset": "pope", "--annotations": str(w.label), "--predictions": str(w.preds)}
    flags.update({f"--{k}": v for k, v in options.items()})
    return ["score", *[x for kv in flags.items() for x in kv]]


# id -> (argv builder (world, fresh out path), substrings the one-line message must contain)
CASES: dict[str, tuple[Callable[[SimpleNamespace, Path], list[str]], list[str]]] = {
    "device-cuda": (lambda w, o: eval_args(w, o, device="cuda:99"), ["'cuda:99'"]),
    "device-tpu": (lambda w, o: eval_args(w, o, device="tpu"), ["'tpu'"]),
    "dtype-int": (lambda w, o: eval_args(w, o, dtype="int8"), ["'int8'"]),
    "out-is-a-file": (lambda w, o: eval_args(w, w.a_file), ["a-file", "is a file"]),
    "model-missing": (lambda w, o: eval_args(w, o, model_path=str(w.root / "nowhere")), ["nowhere"]),
    "no-weights": (lambda w, o: eval_args(w, o, model_path=w.no_weights), ["no-weights", "no weight files"]),
    "truncated-safetensors": (lambda w, o: eval_args(w, o, model_path=w.truncated),
                              ["truncated/model.safetensors", "truncated or corrupt"]),
    "no-processor-files": (lambda w, o: eval_args(w, o, model_path=w.no_processor), ["no processor files"]),
    "feature-layer-list": (lambda w, o: eval_args(w, o, model_path=w.layer_list),
                           ["vision_feature_layer", "[-2, -1]"]),
    "not-llava": (lambda w, o: eval_args(w, o, model_path=str(w.llama)), ["'llama'", "LlamaForCausalLM"]),
    "unknown-method": (lambda w, o: eval_args(w, o, method="nosuch"), ["'nosuch'"]),
    "budget-zero": (lambda w, o: eval_args(w, o, budget="0"), ["budget=0"]),
    "none-with-a-budget": (lambda w, o: eval_args(w, o, method="none", budget="64"),
                           ["'none'", "144 visual tokens", "budget=64"]),
    "budget-above-patches": (lambda w, o: eval_args(w, o, budget="999"), ["999", "144"]),
    "sparsevlm-shallow-model": (lambda w, o: eval_args(w, o, method="sparsevlm", model_path=w.shallow),
                                ["'sparsevlm'", "2 LLM layers"]),
    "bad-shard": (lambda w, o: eval_args(w, o, shard="5/2"), ["'5/2'"]),
    "limit-zero": (lambda w, o: eval_args(w, o, limit="0"), ["limit", "0"]),
    "batch-size-zero": (lambda w, o: eval_args(w, o, batch_size="0"), ["--batch-size", "0"]),
    "max-new-tokens-zero": (lambda w, o: eval_args(w, o, max_new_tokens="0"), ["--max-new-tokens"]),
    "config-missing": (lambda w, o: eval_args(w, o, method="sparsezip", config=str(w.root / "none.yaml")),
                       ["none.yaml"]),
    "config-not-yaml": (lambda w, o: eval_args(w, o, method="sparsezip", config=str(w.bad_yaml)), ["bad.yaml"]),
    "data-missing": (lambda w, o: eval_args(w, o, data=str(w.root / "no-data")), ["no-data"]),
    "unknown-dataset": (lambda w, o: eval_args(w, o, dataset="vqav9"), ["'vqav9'"]),
    "empty-question": (lambda w, o: eval_args(w, o, data=str(w.empty_question), dataset="pope"),
                       ["coco_pope_random.json:2", "empty question"]),
    "missing-image": (lambda w, o: eval_args(w, o, data=str(w.missing_image), dataset="pope"),
                      [coco_name(2), "image file not found"]),
    "corrupt-parquet": (lambda w, o: eval_args(w, o, data=str(w.bad_parquet), dataset="docvqa"),
                        ["validation-00000-of-00001.parquet", "not a readable parquet file"]),
    "predictions-missing": (lambda w, o: score_args(w, predictions=str(w.root / "gone.jsonl")), ["gone.jsonl"]),
    "predictions-a-folder": (lambda w, o: score_args(w, predictions=str(w.root)), ["sweep", "is a folder"]),
    "annotations-of-another-kind": (lambda w, o: score_args(w, dataset="mme"),
                                    ["coco_pope_random.json", "MME annotations"]),
    "annotations-missing": (lambda w, o: score_args(w, annotations=str(w.root / "no-labels")), ["no-labels"]),
    "question-id-null": (lambda w, o: score_args(w, predictions=str(w.null_id)), ["null-id.jsonl:1", "null"]),
    "predictions-not-utf8": (lambda w, o: score_args(w, predictions=str(w.latin1)),
                             ["latin1.jsonl", "not valid UTF-8 text (near line 1)"]),
    "score-corrupt-parquet": (lambda w, o: score_args(w, dataset="docvqa", annotations=str(w.bad_parquet)),
                              ["validation-00000-of-00001.parquet"]),
    "smoke-image-empty": (lambda w, o: ["smoke", "--image", str(w.empty_png), "--out", str(o)],
                          ["empty.png", "the file is empty"]),
    "smoke-image-truncated": (lambda w, o: ["smoke", "--image", str(w.truncated_png), "--out", str(o)],
                              ["truncated.png", "corrupt or unreadable image", "truncated"]),
    "smoke-image-missing": (lambda w, o: ["smoke", "--image", str(w.root / "no.png"), "--out", str(o)], ["no.png"]),
    "smoke-device-tpu": (lambda w, o: ["smoke", "--device", "tpu", "--model-path", w.model, "--out", str(o)],
                         ["'tpu'"]),
    "merge-of-no-run": (lambda w, o: ["merge", str(w.root / "no-run"), "--out", str(o)], ["no-run", "no run.json"]),
    "make-fixtures-over-committed": (lambda w, o: ["make-fixtures"], ["fixtures/data", "--out", "--force"]),
    "train-tiny-over-committed": (lambda w, o: ["train-tiny"], ["fixtures/tiny-llava", "--force"]),
    "train-tiny-no-tower-steps": (lambda w, o: ["train-tiny", "--out", str(o), "--tower-steps", "0"],
                                  ["--tower-steps must be >= 1, got 0"]),
}
assert len(CASES) >= 24


@pytest.fixture
def no_weight_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case must be refused before any weights load: a ``from_pretrained`` would fail the test (its
    AssertionError is not caught by the CLI)."""
    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__}.from_pretrained was called")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_exit_status_2(case: str, world: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture, no_weight_loading: None) -> None:
    build, needles = CASES[case]
    out = tmp_path / "out"
    argv = build(world, out)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"sparsezip {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not out.exists()  # no run folder claimed, no output written
