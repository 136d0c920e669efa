"""The method interface and the registry (timm-style): the only way the suite finds methods.

A new method subclasses :class:`CompressionMethod`, decorates itself with :func:`register_method` and is
imported in ``sparsezip/methods/__init__.py``; it then gets every contract test and its benchmark rows
(declared in its ``benchmark`` attribute) for free.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Literal

from sparsezip.context import CompressionResult, VisionContext, check_finite, finite_check_enabled
from sparsezip.methods.rows import BenchmarkRows

Stage = Literal["vision", "llm"]

_REGISTRY: dict[str, type[CompressionMethod]] = {}


class CompressionMethod(abc.ABC):
    """A visual-token compression method.

    Class attributes declare what the method needs, so callers can refuse early and clearly:
        name: registry key.
        needs_attention: reads ``VisionContext.cls_attn``.
        needs_text: can use ``VisionContext.text_query`` (it still works without one).
        stage: ``"vision"`` compresses between the vision tower and the projector; ``"llm"`` prunes inside
            the language model (its ``compress`` then only does the vision-side part, usually nothing).
        benchmark: the method's rows in the benchmark matrix (budgets, ablations, report order; see
            ``sparsezip/methods/rows.py``); by default one row at the 64-token budget.

    Every method accepts ``budget``: the number of visual tokens fed to the LLM per image (for ``"llm"``
    methods, the layer-averaged equivalent). ``None`` means the method's own default configuration.
    """

    name: ClassVar[str]
    needs_attention: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    stage: ClassVar[Stage] = "vision"
    benchmark: ClassVar[BenchmarkRows] = BenchmarkRows()

    def __call__(self, ctx: VisionContext, *, check_finite_inputs: bool | None = None) -> CompressionResult:
        """Validate ``ctx`` against the declared needs, then :meth:`compress` it.

        ``check_finite_inputs`` (default: on unless ``$SPARSEZIP_CHECK_FINITE=0``) refuses a context whose float
        tensors hold NaN/inf, naming the tensor (:func:`sparsezip.context.check_finite`; one reduction per tensor).
        """
        if not isinstance(ctx, VisionContext):
            raise ValueError(f"{self.name}: expected a VisionContext, got {type(ctx).__name__}")
        if self.needs_attention and ctx.cls_attn is None:
            raise ValueError(
                f"method {self.name!r} needs the CLS attention row (VisionContext.cls_attn), "
                "but the caller did not provide it"
            )
        if finite_check_enabled() if check_finite_inputs is None else check_finite_inputs:
            try:
                check_finite(ctx)
            except ValueError as err:
                raise ValueError(f"method {self.name!r}: {err}") from None
        return self.compress(ctx)

    @abc.abstractmethod
    def compress(self, ctx: VisionContext) -> CompressionResult:
        """Compress ``ctx.hidden [B, N, C]`` to ``CompressionResult.tokens [B, T, C]``."""

    def config(self) -> dict:
        """JSON-serialisable configuration, recorded next to every result."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def register_method(cls: type[CompressionMethod]) -> type[CompressionMethod]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name' to be registered")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (a test's throwaway method); ``ValueError`` if it is not there."""
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is not registered")
    del _REGISTRY[name]


def get_method(name: str, **config: object) -> CompressionMethod:
    """Build the registered method ``name`` with ``config`` (unknown keys raise ``ValueError``)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}") from None
    return cls(**config)


def method_class(name: str) -> type[CompressionMethod]:
    """The registered class for ``name`` (to read ``needs_attention`` etc. without building it)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)
