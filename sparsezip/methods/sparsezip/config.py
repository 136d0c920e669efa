"""SparseZip configuration: YAML -> frozen dataclasses, strictly validated.

The seed repository's YAML layout is accepted as-is: a top-level ``model:`` mapping with a ``sparsezip:``
block inside, keys as in ``specs/methods.md`` section 1::

    model:
      sparsezip:
        dominant: 54
        alphas: {attn: 1.0, entropy: 0.8, mutual: 1.0}
        merging: {contextual_num: 32, kmeans_iters: 1}

Only the ``model.sparsezip`` block is validated here (other top-level keys belong to other parts of a run
configuration and are left alone). Inside it every unknown key, at any depth, is a ``ValueError`` naming the
key by its dotted path; so is a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

ROOT_PATH = "model.sparsezip"


@dataclass(frozen=True)
class Alphas:
    """Weights of the z-scored hybrid-score terms (seed's tuned POPE values)."""

    attn: float = 1.0
    entropy: float = 0.8
    mutual: float = 1.0


@dataclass(frozen=True)
class DynK:
    """Dynamic-K formula ``K = clamp(round(scale * ln(Var(s) + eps) + c), k_min, k_max)``."""

    c: float = 12.0
    eps: float = 1e-6
    scale: float = 1.0


@dataclass(frozen=True)
class Merging:
    """Contextual merging of the non-dominant tokens (k-means on L2-normalised keys)."""

    contextual_num: int = 32
    kmeans_init_factor: float = 2.0
    kmeans_iters: int = 1
    agglomerative: bool = False
    attention_weighted: bool = True


@dataclass(frozen=True)
class SparseZipConfig:
    """Every ``model.sparsezip`` key of the seed's configs, with the seed's tuned POPE defaults.

    With ``keep_cls`` the default output is 1 + 54 + 32 = 87 visual tokens. ``layer`` is read by the model
    adapter (which vision layer feeds the method); the method itself only records it.
    """

    dynamic_k: bool = False
    k_min: int = 32
    k_max: int = 64
    dynk: DynK = field(default_factory=DynK)
    dominant: int = 54
    keep_cls: bool = True
    alphas: Alphas = field(default_factory=Alphas)
    tau_feat: float = 0.15
    tau_sim: float = 0.08
    cross_beta: float = 0.3
    merging: Merging = field(default_factory=Merging)
    seed: int = 0
    layer: int = -2
    skip_hybrid_attn: bool = False
    skip_dynamic_k: bool = False
    skip_ctx_merge: bool = False

    def __post_init__(self) -> None:
        _check_values(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = ROOT_PATH) -> SparseZipConfig:
        """Build from a (possibly nested, possibly partial) mapping; missing keys take the defaults.

        Raises:
            ValueError: naming the dotted path of an unknown key or of a value of the wrong type.
        """
        return _build(cls, data, path)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON/YAML-friendly), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SparseZipConfig:
        """A copy with top-level fields changed (re-validated)."""
        return dataclasses.replace(self, **changes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a seed-style YAML file and return its ``model.sparsezip`` block, validated.

    The block is returned as a plain dict so it can be passed as-is:
    ``get_method("sparsezip", **load_yaml(path))``.

    Raises:
        ValueError: the file is missing or not valid YAML, has no ``model.sparsezip`` mapping, or the block
            has an unknown key / a wrongly typed value (the message names the file and the dotted key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from None
    model = document.get("model") if isinstance(document, dict) else None
    block = model.get("sparsezip") if isinstance(model, dict) else None
    if not isinstance(block, dict):
        raise ValueError(f"{path}: expected a mapping at '{ROOT_PATH}' (top-level 'model:' with 'sparsezip:')")
    try:
        SparseZipConfig.from_dict(block)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return block


def _build(cls: type, data: Any, path: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, recursing into nested dataclass fields."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"'{path}' must be a mapping, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ValueError(
                f"unknown config key '{path}.{key}'; allowed keys at '{path}': {', '.join(sorted(names))}"
            )
    values = {key: _coerce(hints[key], value, f"{path}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except ValueError as err:
        raise ValueError(f"'{path}': {err}") from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """Type-check ``value`` against the field annotation ``hint`` (no silent conversions except int->float)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"'{path}' must be true/false, got {type(value).__name__}: {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"'{path}' must be an integer, got {type(value).__name__}: {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"'{path}' must be a number, got {type(value).__name__}: {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"'{path}' must be finite, got {value!r}")
        return float(value)
    raise ValueError(f"'{path}': unsupported annotation {hint}")


def _check_values(cfg: SparseZipConfig) -> None:
    """Range checks that no type annotation can express."""
    if cfg.k_min < 0 or cfg.k_max < cfg.k_min:
        raise ValueError(f"need 0 <= k_min <= k_max, got k_min={cfg.k_min}, k_max={cfg.k_max}")
    if cfg.dominant < 0:
        raise ValueError(f"dominant must be >= 0, got {cfg.dominant}")
    if cfg.tau_feat <= 0 or cfg.tau_sim <= 0:
        raise ValueError(f"temperatures must be > 0, got tau_feat={cfg.tau_feat}, tau_sim={cfg.tau_sim}")
    if cfg.dynk.eps <= 0:
        raise ValueError(f"dynk.eps must be > 0, got {cfg.dynk.eps}")
    if cfg.merging.contextual_num < 0:
        raise ValueError(f"merging.contextual_num must be >= 0, got {cfg.merging.contextual_num}")
    if cfg.merging.kmeans_iters < 0:
        raise ValueError(f"merging.kmeans_iters must be >= 0, got {cfg.merging.kmeans_iters}")
    if cfg.merging.kmeans_init_factor <= 0:
        raise ValueError(f"merging.kmeans_init_factor must be > 0, got {cfg.merging.kmeans_init_factor}")
