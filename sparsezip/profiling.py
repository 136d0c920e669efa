"""Stage timers and analytic prefill FLOPs: the cost side of every result (peak memory and KV-cache bytes live
in ``sparsezip.memory``).

Timing follows evaluation.md ("Timing"). On CPU a timestamp is ``perf_counter``. On CUDA it is a CUDA event
recorded on the current stream (plus the host clock, for reference): the time between two marks is
``Event.elapsed_time``, i.e. the device's own timeline, which charges queued kernels to the stage that launched
them without the host waiting for the device at every mark (the old ``synchronize`` + ``perf_counter`` did,
and so serialised the pipeline it measured). The device is waited for once, when a duration is first read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued kernels (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str) -> float:
    """Seconds from ``perf_counter`` after synchronising ``device``: a timestamp that includes queued work."""
    synchronize(device)
    return time.perf_counter()


@dataclass(frozen=True, eq=False)
class Mark:
    """A point in time of one device: ``later - earlier`` is the seconds between two marks (a float).

    ``host`` is ``perf_counter`` when the mark was made; ``event`` the CUDA event recorded then on the device's
    current stream (``None`` on CPU). Subtracting CUDA marks waits for the later event, once.
    """

    host: float
    event: torch.cuda.Event | None = None

    def __sub__(self, earlier: Mark) -> float:
        if not isinstance(earlier, Mark):
            return NotImplemented
        if self.event is not None and earlier.event is not None:
            self.event.synchronize()
            return earlier.event.elapsed_time(self.event) / 1e3
        return self.host - earlier.host


def mark(device: torch.device | str) -> Mark:
    """A :class:`Mark` now: a recorded CUDA event on ``device``'s current stream, or the host clock on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return Mark(time.perf_counter(), event)
    return Mark(time.perf_counter())


class StageTimer:
    """Accumulates milliseconds per named stage on one device (CUDA events there, the host clock on CPU).

    Example::

        timer = StageTimer(device)
        with timer.stage("vision_ms"):
            run_tower()
        timer.ms  # {"vision_ms": 12.3}; on CUDA reading it waits for the stage's last kernel
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._spans: list[tuple[str, Mark, Mark]] = []
        self._added: dict[str, float] = {}

    @property
    def uses_cuda_events(self) -> bool:
        """Whether durations come from CUDA events (the device's timeline) rather than the host clock."""
        return self.device.type == "cuda"

    def now(self) -> Mark:
        """A :class:`Mark` of this timer's device (no host sync)."""
        return mark(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block and add it to ``ms[name]`` (stages may be entered more than once)."""
        start = self.now()
        try:
            yield
        finally:
            self._spans.append((name, start, self.now()))

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` (measured elsewhere) to ``ms[name]``."""
        if seconds < 0:
            raise ValueError(f"stage {name!r}: negative duration {seconds} s")
        self._added[name] = self._added.get(name, 0.0) + seconds * 1e3

    @property
    def ms(self) -> dict[str, float]:
        """Milliseconds per stage (a new dict on every read)."""
        total = dict(self._added)
        for name, start, end in self._spans:
            total[name] = total.get(name, 0.0) + (end - start) * 1e3
        return total


class FirstCallClock:
    """A no-op logits processor that marks its first call: inside Hugging Face ``generate`` that is the moment
    the prefill's logits exist, i.e. time to first token, which splits prefill from decode without touching
    ``generate`` itself. Pass it in ``logits_processor=[...]``; read ``first_call`` (a :class:`Mark`, or
    ``None`` if never called). On CUDA the mark is an event: no host sync inside generation.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.first_call: Mark | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids: ``[B, S]``, scores: ``[B, V]``; returns ``scores`` unchanged."""
        if self.first_call is None:
            self.first_call = mark(self.device)
        return scores


def decoder_prefill_flops(
    seq_lens: int | Sequence[int],
    *,
    num_layers: int,
    hidden: int,
    intermediate: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    vocab_size: int = 0,
    head_dim: int | None = None,
) -> int:
    """Analytic FLOPs (multiply-add = 2) of one causal prefill through a Llama-style decoder.

    Per layer with ``S`` tokens, head dim ``d`` (``head_dim``, default ``hidden / num_heads``), ``q = num_heads d``
    and ``kv = kv_heads d`` (GQA: Mistral, Qwen2.5 cache fewer heads than they query): projections
    ``2 S (2 hidden q + 2 hidden kv)``, causal attention ``2 S^2 q`` (``QK^T`` and ``AV``, each half of the full
    square), gated MLP ``6 S hidden intermediate``. Plus the LM head on the last token (``2 hidden vocab``).
    Norms, RoPE, biases and softmax are ignored (a few percent at these sizes).

    seq_lens: tokens each layer processes, one int for all layers or a list of ``num_layers`` ints (in-LLM
    pruning shortens the sequence for later layers).
    """
    lens = [seq_lens] * num_layers if isinstance(seq_lens, int) else list(seq_lens)
    if len(lens) != num_layers:
        raise ValueError(f"seq_lens has {len(lens)} entries for num_layers={num_layers}")
    if any(s < 0 for s in lens):
        raise ValueError(f"seq_lens must be non-negative, got {lens}")
    if head_dim is None and hidden % num_heads:
        raise ValueError(f"hidden {hidden} is not divisible by num_heads {num_heads}")
    dim = hidden // num_heads if head_dim is None else head_dim
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    q_dim, kv_dim = num_heads * dim, kv_heads * dim
    total = 0
    for s in lens:
        total += 2 * s * (2 * hidden * q_dim + 2 * hidden * kv_dim)
        total += 2 * s * s * q_dim
        total += 6 * s * hidden * intermediate
    return total + 2 * hidden * vocab_size
