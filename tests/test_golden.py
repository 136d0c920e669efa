"""Vision-side baselines against their authors' code: outputs stored in ``fixtures/golden/<method>/``.

Each file holds fixed random inputs and what the authors' function returned on them (provenance, commit and
the exact call in that folder's ``SOURCE.md``); ours must reproduce it: kept indices exactly, merged tokens
to float32 rounding. Batch files are run as one batch here, so batching is checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sparsezip import VisionContext, get_method

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
METHODS = ("tome", "divprune", "prumerge_plus", "vispruner", "cdpruner")
CASES = [(m, f) for m in METHODS for f in sorted((GOLDEN / m).glob("*.safetensors"))]


def _load(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    return meta, load_file(str(path))


def _no_keys(hidden: torch.Tensor) -> torch.Tensor:
    """Methods that never read keys still need a well-formed context."""
    return hidden.new_zeros(*hidden.shape[:2], 1)


def test_every_method_has_golden_cases_and_provenance() -> None:
    for method in METHODS:
        assert len(list((GOLDEN / method).glob("*.safetensors"))) >= 3, method
        source = (GOLDEN / method / "SOURCE.md").read_text()
        assert "commit" in source and "github.com" in source, method


@pytest.mark.parametrize(("method", "path"), CASES, ids=[f"{m}-{p.stem}" for m, p in CASES])
def test_matches_authors_outputs(method: str, path: Path) -> None:
    meta, t = _load(path)
    hidden = t["hidden"]
    if method == "tome":
        res = get_method("tome", budget=int(meta["budget"]))(VisionContext(hidden=hidden, keys=t["keys"]))
        assert torch.equal(res.assignment, t["assignment"])  # same merges, same output order
        members = torch.stack([(res.assignment == s).sum(1) for s in range(res.tokens.shape[1])], dim=1)
        assert torch.equal(members.float(), t["sizes"])
        torch.testing.assert_close(res.tokens, t["tokens"], rtol=0, atol=1e-5)
    elif method == "prumerge_plus":
        ctx = VisionContext(hidden=hidden, keys=t["keys"], cls_attn=t["cls_attn"])
        res = get_method("prumerge_plus")(ctx)  # the authors' adaptive rule
        assert res.tokens.shape == t["tokens"].shape
        torch.testing.assert_close(res.tokens, t["tokens"], rtol=0, atol=1e-5)
    else:
        config = {"budget": int(meta["budget"])}
        if method == "vispruner":
            config["important_ratio"] = float(meta["important_ratio"])
        ctx = VisionContext(hidden=hidden, keys=_no_keys(hidden), cls_attn=t.get("cls_attn"),
                            text_query=t.get("text_query"))
        res = get_method(method, **config)(ctx)
        assert torch.equal(res.kept_index, t["kept_index"])
        assert torch.equal(res.tokens, hidden.gather(1, t["kept_index"][:, :, None].expand(-1, -1, hidden.shape[2])))


def test_divprune_greedy_order_matches_authors() -> None:
    from sparsezip.methods.divprune import divprune_order

    for path in sorted((GOLDEN / "divprune").glob("*.safetensors")):
        meta, t = _load(path)
        assert torch.equal(divprune_order(t["hidden"][:, 1:], int(meta["budget"])), t["greedy_order"]), path.name
