"""Loaders on tiny trees in both layouts of every dataset, the data-root convention, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sparsezip.data import load_dataset, resolve_dataset
from sparsezip.data.registry import detect_layout
from sparsezip.data.sample import ParquetImage, Sample
from sparsezip.data.subsets import limit_samples, parse_shard, shard_bounds
from sparsezip.testing.trees import write_tree

LAYOUTS = ("files", "parquet")


def load(family: str, path: Path, **options) -> list[Sample]:
    return list(load_dataset(family, path, **options))


# --- both layouts give the same samples -----------------------------------------------------------------
@pytest.mark.parametrize("family", ["pope", "mme", "docvqa"])
def test_both_layouts_give_the_same_ids_questions_answers_and_pixels(family: str, tmp_path: Path) -> None:
    by_layout = {}
    for layout in LAYOUTS:
        path = write_tree(family, layout, tmp_path / layout)
        assert detect_layout(path) == layout
        by_layout[layout] = load(family, path)
    files, parquet = by_layout["files"], by_layout["parquet"]
    assert [str(s.id) for s in files] == [str(s.id) for s in parquet]
    assert [(s.question, s.answers, s.meta.get("category")) for s in files] == [
        (s.question, s.answers, s.meta.get("category")) for s in parquet
    ]
    assert isinstance(parquet[0].image_ref, ParquetImage) and isinstance(files[0].image_ref, Path)
    for a, b in zip(files, parquet, strict=True):
        image = b.load_image()
        assert image.mode == "RGB" and image.size == a.load_image().size == (8, 8)
    assert [a.load_image().tobytes() for a in files] == [b.load_image().tobytes() for b in parquet]


def test_pope_label_files(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path)
    samples = load("pope", folder)
    assert [(s.meta["category"], s.id) for s in samples] == [
        ("random", 1), ("random", 2), ("random", 3), ("random", 4),
        ("adversarial", 1), ("adversarial", 2), ("adversarial", 3)]  # fmt: skip
    assert samples[0].question == "Is there a dog in the image?" and samples[0].answers == ("yes",)
    assert samples[0].meta["source"] == "coco_pope_random.json" and len(samples[0].meta["source_sha256"]) == 64
    assert [s.id for s in load("pope-random", folder)] == [1, 2, 3, 4]
    assert [s.id for s in load("pope", folder / "coco_pope_random.json")] == [1, 2, 3, 4]


def test_pope_images_in_a_sibling_or_given_folder(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path / "a")
    labels = tmp_path / "b" / "labels"
    labels.mkdir(parents=True)
    shutil.copy(folder / "coco_pope_random.json", labels)
    shutil.copytree(folder / "val2014", tmp_path / "b" / "val2014")  # one level up from the labels
    assert load("pope", labels)[0].image_ref == tmp_path / "b" / "val2014" / "COCO_val2014_000000000001.jpg"
    elsewhere = tmp_path / "images"
    shutil.move(tmp_path / "b" / "val2014", elsewhere)
    with pytest.raises(ValueError, match="no COCO image folder"):
        load("pope", labels)
    assert load("pope", labels, image_root=elsewhere)[0].load_image().size == (8, 8)
    # scoring needs no images
    assert len(load("pope", labels, check_images=False)) == 4


def test_pope_parquet_category_filter(tmp_path: Path) -> None:
    path = write_tree("pope", "parquet", tmp_path)
    assert [s.id for s in load("pope-adversarial", path)] == ["1", "2", "3"]
    assert {s.meta["category"] for s in load("pope", path)} == {"random", "adversarial"}


def test_mme_tree_ids_pairs_and_subset_of_subtasks(tmp_path: Path) -> None:
    root = write_tree("mme", "files", tmp_path)
    samples = load("mme", root)
    assert [s.id for s in samples] == [
        "count/000000000001.jpg#0", "count/000000000001.jpg#1", "count/000000000002.jpg#0",
        "count/000000000002.jpg#1", "color/000000000003.jpg#0", "color/000000000003.jpg#1",
        "artwork/10002.jpg#0", "artwork/10002.jpg#1",
    ]  # official subtask order; nested artwork's images/ folder is not part of the id
    assert samples[0].question == "Are there two dogs? Please answer yes or no." and samples[0].answers == ("Yes",)
    assert samples[0].meta["group"] == samples[1].meta["group"] == "count/000000000001.jpg"
    assert samples[-1].image_ref.parent.name == "images"
    # found at any depth: the benchmark folder itself, or a zip extracted one level deeper
    assert [s.id for s in load("mme", root / "MME_Benchmark")] == [s.id for s in samples]
    deeper = tmp_path / "extra" / "MME_Benchmark_release_version"
    shutil.copytree(root, deeper)
    assert [s.id for s in load("mme", tmp_path / "extra")] == [s.id for s in samples]
    assert {s.meta["category"] for s in load("mme", root, subtasks=["color"])} == {"color"}


def test_docvqa_ids_and_answers(tmp_path: Path) -> None:
    samples = load("docvqa", write_tree("docvqa", "files", tmp_path))
    assert [s.id for s in samples] == [101, 102, 103]
    assert samples[0].answers == ("May 5, 1990", "5 May 1990")


def test_coco_captions(tmp_path: Path) -> None:
    samples = load("coco_captions", write_tree("coco_captions", "files", tmp_path))
    assert [(s.id, s.answers) for s in samples] == [(42, ("a dog on grass", "a brown dog")), (43, ("a red car",))]
    assert samples[0].load_image().size == (8, 8)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "captions.parquet")
    with pytest.raises(ValueError, match=r"only the captions_val2014\.json layout"):
        load("coco_captions", tmp_path / "captions.parquet")


def test_resolve_dataset_follows_the_data_root_convention(tmp_path: Path) -> None:
    for family in ("pope", "mme", "docvqa"):
        write_tree(family, "files", tmp_path / "files")
        write_tree(family, "parquet", tmp_path / "parquet")
    family, path, options = resolve_dataset(tmp_path / "files", "pope-random")
    assert (family, path.name, options) == ("pope", "coco_pope_random.json", {})
    assert resolve_dataset(tmp_path / "parquet", "pope-adversarial") == (
        "pope", tmp_path / "parquet" / "pope", {"category": "adversarial"})
    assert resolve_dataset(tmp_path / "files", "mme")[1].name == "MME_Benchmark_release_version"
    assert resolve_dataset(tmp_path / "parquet", "mme")[1].name == "mme"
    assert resolve_dataset(tmp_path / "files", "docvqa")[1].name == "docvqa"
    with pytest.raises(ValueError, match=r"no POPE label file \*pope_popular.json"):
        resolve_dataset(tmp_path / "files", "pope-popular")
    with pytest.raises(ValueError, match="unknown dataset 'pope-extreme'"):
        resolve_dataset(tmp_path / "files", "pope-extreme")
    with pytest.raises(ValueError, match="unknown dataset 'vqav2'"):
        resolve_dataset(tmp_path / "files", "vqav2")
    with pytest.raises(ValueError, match="coco"):
        resolve_dataset(tmp_path / "files", "coco_captions")


# --- bad input ------------------------------------------------------------------------------------------
def test_missing_image_names_the_line_and_file(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path)
    (folder / "val2014" / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"coco_pope_random.json:3: image file not found: .*000000000002"):
        load("pope", folder)
    docs = write_tree("docvqa", "files", tmp_path / "d")
    (docs / "documents" / "doc2.png").unlink()
    with pytest.raises(ValueError, match=r"data\[2\]: image file not found: .*doc2.png"):
        load("docvqa", docs)
    mme = write_tree("mme", "files", tmp_path / "m")
    (mme / "MME_Benchmark" / "color" / "000000000003.jpg").unlink()
    with pytest.raises(ValueError, match=r"000000000003.txt: no image with stem '000000000003'"):
        load("mme", mme)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupt_image_names_the_file(tmp_path: Path, layout: str) -> None:
    path = write_tree("docvqa", layout, tmp_path)
    if layout == "files":
        (path / "documents" / "doc1.png").write_bytes(b"\x89PNG not really")
        match = r"corrupt or unreadable image: .*doc1.png \(sample 101\)"
    else:
        file = next(path.rglob("*.parquet"))
        table = pq.read_table(file).to_pylist()
        table[0]["image"]["bytes"] = b"garbage"
        pq.write_table(pa.Table.from_pylist(table), file)
        match = r"corrupt or unreadable image: .*\.parquet#rowgroup=0,row=0"
    sample = load("docvqa", path)[0]
    with pytest.raises(ValueError, match=match):
        sample.load_image()


def test_a_deleted_image_fails_at_decode_time_with_its_name(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path)
    sample = load("pope-random", folder)[0]
    sample.image_ref.unlink()
    with pytest.raises(ValueError, match=r"image file not found: .*000000000001.jpg"):
        sample.load_image()


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path)
    label = folder / "coco_pope_random.json"
    lines = label.read_text().splitlines()
    lines[2] = lines[2][:-5]
    label.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"coco_pope_random.json:3: malformed JSON line"):
        load("pope-random", folder)
    docs = write_tree("docvqa", "files", tmp_path / "d")
    (docs / "val_v1.0.json").write_text('{"data": [\n{"questionId": 1,,}\n]}')
    with pytest.raises(ValueError, match=r"val_v1.0.json:2: malformed JSON"):
        load("docvqa", docs)


def test_missing_fields_and_bad_labels(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path)
    label = folder / "coco_pope_random.json"
    label.write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "Q?"}) + "\n")
    with pytest.raises(ValueError, match=r"coco_pope_random.json:1: POPE label line lacks field\(s\) \['label'\]"):
        load("pope-random", folder)
    label.write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "Q?", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="must be yes/no, got 'maybe'"):
        load("pope-random", folder)
    mme = write_tree("mme", "files", tmp_path / "m")
    (mme / "MME_Benchmark" / "count" / "000000000001.txt").write_text("Only one question?\tYes\n")
    with pytest.raises(ValueError, match="exactly 2 questions per image, found 1"):
        load("mme", mme)
    (mme / "MME_Benchmark" / "count" / "000000000001.txt").write_text("No tab here\nQ?\tYes\n")
    with pytest.raises(ValueError, match=r"000000000001.txt:1: expected 'question<TAB>Yes\|No'"):
        load("mme", mme)


@pytest.mark.parametrize("family", ["pope", "mme", "docvqa"])
def test_missing_parquet_columns(tmp_path: Path, family: str) -> None:
    path = write_tree(family, "parquet", tmp_path)
    file = next(path.rglob("*.parquet"))
    table = pq.read_table(file)
    column = {"pope": "answer", "mme": "category", "docvqa": "answers"}[family]
    pq.write_table(table.drop_columns([column]), file)
    with pytest.raises(ValueError, match=rf"missing parquet column\(s\) \['{column}'\]"):
        load(family, path)


@pytest.mark.parametrize("bad", ["../outside.jpg", "/etc/passwd", "val2014/../../x.jpg", ""])
def test_image_paths_may_not_escape_the_root(tmp_path: Path, bad: str) -> None:
    folder = write_tree("pope", "files", tmp_path / "data")
    (tmp_path / "data" / "pope" / "outside.jpg").write_bytes(b"")
    row = {"question_id": 1, "image": bad, "text": "Q?", "label": "yes"}
    (folder / "coco_pope_random.json").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"coco_pope_random.json:1: image path .* (escapes|must be a relative)"):
        load("pope-random", folder)
    docs = write_tree("docvqa", "files", tmp_path / "d")
    payload = json.loads((docs / "val_v1.0.json").read_text())
    payload["data"][0]["image"] = bad or "../x.png"
    (docs / "val_v1.0.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"data\[0\]: image path"):
        load("docvqa", docs)


def test_symlinked_image_folder_is_allowed(tmp_path: Path) -> None:
    folder = write_tree("pope", "files", tmp_path / "data")
    shutil.move(folder / "val2014", tmp_path / "shared_coco")
    (folder / "val2014").symlink_to(tmp_path / "shared_coco")
    assert len(load("pope-random", folder)) == 4


def test_bad_path_and_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset path does not exist"):
        load_dataset("pope", tmp_path / "nope")
    with pytest.raises(ValueError, match="bad dataset option"):
        load_dataset("docvqa", write_tree("docvqa", "files", tmp_path), category="random")
    with pytest.raises(ValueError, match="no MME subtask folder"):
        load("mme", tmp_path)


def test_image_is_decoded_lazily_and_converted_to_rgb(tmp_path: Path) -> None:
    folder = write_tree("docvqa", "files", tmp_path)
    Image.new("L", (5, 5), 7).save(folder / "documents" / "doc1.png")
    samples = load("docvqa", folder)
    image = samples[0].load_image()
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (7, 7, 7)


# --- limit and shards -----------------------------------------------------------------------------------
def test_limit_never_splits_an_mme_pair(tmp_path: Path) -> None:
    samples = load("mme", write_tree("mme", "files", tmp_path))
    assert [len(limit_samples(samples, n)) for n in (1, 2, 3, 4, 5, 100)] == [2, 2, 4, 4, 6, 8]
    docs = load("docvqa", write_tree("docvqa", "files", tmp_path / "d"))
    assert len(limit_samples(docs, 2)) == 2
    with pytest.raises(ValueError, match="got 0"):
        limit_samples(samples, 0)


def test_shards_partition_whole_groups_in_order(tmp_path: Path) -> None:
    samples = load("mme", write_tree("mme", "files", tmp_path))
    for count in (1, 2, 3, 4, 5):
        bounds = [shard_bounds(samples, i, count) for i in range(count)]
        covered = [i for start, end in bounds for i in range(start, end)]
        assert covered == list(range(len(samples)))  # contiguous, disjoint, complete, in order
        assert all(start % 2 == 0 and end % 2 == 0 for start, end in bounds)  # pairs never split
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
