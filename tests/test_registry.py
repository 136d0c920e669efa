import pytest
import torch

from sparsezip import CompressionResult, VisionContext, get_method, list_methods
from sparsezip.cli import main


def _ctx(b: int = 2, n: int = 17, c: int = 8) -> VisionContext:
    g = torch.Generator().manual_seed(0)
    return VisionContext(hidden=torch.randn(b, n, c, generator=g), keys=torch.randn(b, n, 4, generator=g))


def test_none_is_llava_default_feature_selection() -> None:
    ctx = _ctx()
    res = get_method("none")(ctx)
    assert isinstance(res, CompressionResult)
    assert torch.equal(res.tokens, ctx.hidden[:, 1:])
    assert res.lengths.tolist() == [16, 16]
    assert (res.assignment[:, 0] == -1).all() and res.assignment[0, 1:].tolist() == list(range(16))


def test_unknown_method_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*none"):
        get_method("nope")
    assert "none" in list_methods()


def test_context_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="keys"):
        VisionContext(hidden=torch.zeros(1, 5, 4), keys=torch.zeros(1, 4, 2))


def test_methods_command_lists_none(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    assert "none" in capsys.readouterr().out


def test_context_rejects_bad_sample_seeds() -> None:
    with pytest.raises(ValueError, match="sample_seeds"):
        VisionContext(hidden=torch.zeros(2, 5, 4), keys=torch.zeros(2, 5, 2), sample_seeds=torch.zeros(3).long())
