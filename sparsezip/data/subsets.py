"""Deterministic subsets of a dataset: ``--limit`` and ``--shard i/n``, both keeping each group (an MME
image's question pair) whole."""

from __future__ import annotations

from collections.abc import Sequence

from sparsezip.data.sample import Sample


def sample_group(sample: Sample) -> str:
    """The unit that must not be split: ``meta["group"]`` (MME: the image), else the sample itself."""
    return str(sample.meta.get("group", f"{sample.meta.get('category', '')}/{sample.id}"))


def group_spans(samples: Sequence[Sample]) -> list[tuple[int, int]]:
    """``[start, end)`` index spans of consecutive samples sharing a group (loaders emit groups contiguously).

    Raises ``ValueError`` if a group reappears after another one (it could then be split)."""
    spans: list[tuple[int, int]] = []
    seen: set[str] = set()
    previous = None
    for index, sample in enumerate(samples):
        group = sample_group(sample)
        if group == previous:
            spans[-1] = (spans[-1][0], index + 1)
            continue
        if group in seen:
            raise ValueError(f"sample {sample.id!r}: group {group!r} is not contiguous in the dataset order")
        seen.add(group)
        spans.append((index, index + 1))
        previous = group
    return spans


def limit_samples(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples, extended to the end of the last group started (so ``--limit 3`` on MME
    gives 4 samples: two whole question pairs). ``None`` = all."""
    if limit is None:
        return list(samples)
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    for start, end in group_spans(samples):
        if start < limit <= end:
            return list(samples[:end])
    return list(samples)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return index, count


def shard_bounds(samples: Sequence[Sample], index: int, count: int) -> tuple[int, int]:
    """``[start, end)`` of shard ``index`` of ``count``: contiguous blocks of whole groups, sizes within one
    group of each other. Contiguous (not round-robin) so a shard reads its parquet row groups once."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    spans = group_spans(samples)
    first, last = len(spans) * index // count, len(spans) * (index + 1) // count
    if first == last:  # more shards than groups: this one is empty
        return len(samples), len(samples)
    return spans[first][0], spans[last - 1][1]
