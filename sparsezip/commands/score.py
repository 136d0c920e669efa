"""``sparsezip score``: metrics for a predictions file against the annotations, as one JSON object."""

from __future__ import annotations

import argparse
import json

HELP = "score a predictions JSON-lines file against a dataset's annotations (prints one JSON object)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="pope, mme, docvqa or coco_captions (or a benchmark "
                        "name such as pope-random)")
    parser.add_argument("--annotations", required=True,
                        help="a POPE label file or folder of them, the MME release tree, the DocVQA json, "
                             "or any of these as HF parquet")
    parser.add_argument("--predictions", required=True,
                        help='JSON lines {"question_id": ..., "prediction": "<raw text>"} (LLaVA\'s "text" '
                             "is accepted too)")
    parser.add_argument("--parser", default=None, help="answer parser: official (default) or lmms-eval")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score only the annotated questions that have a prediction")


def run(args: argparse.Namespace) -> int:
    from sparsezip.data.records import join_predictions, read_predictions, score_records
    from sparsezip.data.registry import dataset_spec, load_dataset

    family = dataset_spec(args.dataset).family
    samples = load_dataset(args.dataset, args.annotations, check_images=False)
    records = join_predictions(family, samples, read_predictions(args.predictions),
                               allow_missing=args.allow_missing)
    print(json.dumps(score_records(family, records, args.parser), indent=2))
    return 0
