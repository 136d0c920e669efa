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
key by its dotted path; so is a value of the wrong type, and so is a key written twice (in the block or on the
way to it): YAML itself, and ``yaml.safe_load``, silently keep the last value, which is how the seed's
``config/sparsezip_mme.yaml`` ran with ``cross_beta: 0.1`` under an earlier ``cross_beta: 0.3``.

Presets (``presets/*.yaml`` next to this module, :func:`load_preset`, :func:`list_presets`): the seed's three
per-dataset configs (``pope``, ``mme``, ``docvqa``, their duplicates resolved as the seed's loader resolved
them) and ``seed-live`` / ``seed-live-mme`` (what the seed's code actually ran); each file's header says
where it comes from. :func:`resolve_config` takes a preset name or a YAML path (the CLI's ``--config``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

ROOT_PATH = "model.sparsezip"
PRESET_SUFFIX = ".yaml"
# The datasets the seed shipped a config for (config/sparsezip_<name>.yaml); each is the preset of that name.
SEED_DATASET_PRESETS: tuple[str, ...] = ("pope", "mme", "docvqa")


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
        ValueError: the file is missing or not valid YAML, has no ``model.sparsezip`` mapping, writes a key of
            (or on the way to) the block twice, or the block has an unknown key / a wrongly typed value (the
            message names the file and the dotted key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str = "<string>") -> dict[str, Any]:
    """:func:`load_yaml` on YAML ``text``; ``source`` names it in messages."""
    try:
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: invalid YAML: {err}") from None
    if duplicates:
        raise ValueError(f"{source}: {'; '.join(duplicates)}. A YAML loader silently keeps the last value "
                         "(yaml.safe_load does); write each key once")
    model = document.get("model") if isinstance(document, dict) else None
    block = model.get("sparsezip") if isinstance(model, dict) else None
    if not isinstance(block, dict):
        raise ValueError(f"{source}: expected a mapping at '{ROOT_PATH}' (top-level 'model:' with 'sparsezip:')")
    try:
        SparseZipConfig.from_dict(block)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return block


def list_presets() -> list[str]:
    """The names of the shipped presets (``presets/<name>.yaml``), sorted."""
    folder = resources.files(__package__) / "presets"
    return sorted(f.name.removesuffix(PRESET_SUFFIX) for f in folder.iterdir() if f.name.endswith(PRESET_SUFFIX))


def load_preset(name: str) -> dict[str, Any]:
    """The ``model.sparsezip`` block of the shipped preset ``name`` (see :func:`list_presets`), validated like
    :func:`load_yaml`: ``get_method("sparsezip", **load_preset("mme"))``."""
    if name not in list_presets():
        raise ValueError(f"unknown SparseZip preset {name!r}; presets: {', '.join(list_presets())}")
    file = resources.files(__package__) / "presets" / f"{name}{PRESET_SUFFIX}"
    return parse_yaml(file.read_text(encoding="utf-8"), f"preset {name!r}")


def seed_dataset_config(family: str) -> dict[str, Any]:
    """The seed's preset for dataset ``family`` (``pope``, ``mme``, ``docvqa``), ``{}`` for any other: what the
    benchmark matrix starts every SparseZip row from (``BenchmarkRows.dataset_config``)."""
    return load_preset(family) if family in SEED_DATASET_PRESETS else {}


def resolve_config(value: str | Path) -> dict[str, Any]:
    """A ``model.sparsezip`` block from a YAML file path or, when no such file exists, a preset name."""
    if Path(value).is_file():
        return load_yaml(value)
    if str(value) in list_presets():
        return load_preset(str(value))
    raise ValueError(f"config {str(value)!r} is neither a YAML file nor a preset; presets: {', '.join(list_presets())}")


def _duplicate_keys(root: yaml.Node | None) -> list[str]:
    """One message per key written twice in a mapping that is, or leads to, the ``model.sparsezip`` block
    (elsewhere the document belongs to other tools). Works on the composed node tree: nothing is constructed."""
    problems: list[str] = []
    wanted = ROOT_PATH.split(".")

    def relevant(parts: list[str]) -> bool:
        n = min(len(parts), len(wanted))
        return parts[:n] == wanted[:n]

    def walk(node: yaml.Node, parts: list[str]) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":  # merge keys may repeat
                continue
            key, child = key_node.value, [*parts, key_node.value]
            if not relevant(child):
                continue
            if key in seen:
                first_key, first_value = seen[key]
                problems.append(
                    f"duplicate key '{'.'.join(child)}' (line {first_key.start_mark.line + 1}: "
                    f"{_describe(first_value)}, again on line {key_node.start_mark.line + 1}: {_describe(value_node)})"
                )
            seen[key] = (key_node, value_node)
            walk(value_node, child)

    if root is not None:
        walk(root, [])
    return problems


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return repr(node.value)
    return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"


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
