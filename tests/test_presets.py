"""SparseZip presets (the seed's per-dataset configs and what its code ran), ``--config NAME``, and duplicate
keys, which YAML would otherwise resolve silently to the last value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sparsezip import VisionContext, get_method
from sparsezip.cli import main
from sparsezip.commands import eval as eval_command
from sparsezip.methods.sparsezip.config import (
    SparseZipConfig,
    list_presets,
    load_preset,
    load_yaml,
    parse_yaml,
    resolve_config,
)
from sparsezip.testing.fake import FakeModelPlan, FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree

# The seed's config/sparsezip_mme.yaml in miniature: cross_beta written twice, the later value is what ran.
MME_LIKE = """\
model:
  dominant: 54
  sparsezip:
    cross_beta: 0.3
    merging:
      contextual_num: 32
    tau_feat: 0.15
    cross_beta: 0.1
runner:
  seed: 42
  seed: 43
"""


def _context(seed: int = 0, n: int = 145) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    return VisionContext(hidden=torch.randn(2, n, 16, generator=g), keys=torch.randn(2, n, 8, generator=g),
                         cls_attn=torch.softmax(3 * torch.randn(2, 4, n, generator=g), dim=-1),
                         text_query=torch.randn(2, 16, generator=g))


def test_the_shipped_presets() -> None:
    assert list_presets() == ["docvqa", "mme", "pope", "seed-live", "seed-live-mme"]
    for name in list_presets():
        cfg = get_method("sparsezip", **load_preset(name)).cfg
        assert (int(cfg.keep_cls), cfg.dominant, cfg.merging.contextual_num) == (1, 54, 32)  # 1 + 54 + 32 = 87
        assert not (cfg.dynamic_k and not cfg.skip_dynamic_k)  # K = 54 fixed, as the seed ran
        assert cfg.cross_beta == (0.1 if "mme" in name else 0.3)
        assert cfg.merging.attention_weighted is not name.startswith("seed-live")


def test_pope_preset_is_the_readme_default_and_seed_live_differs_only_in_the_merge() -> None:
    ctx = _context()
    default = get_method("sparsezip")(ctx)
    pope = get_method("sparsezip", **load_preset("pope"))(ctx)
    live = get_method("sparsezip", **load_preset("seed-live"))(ctx)
    assert torch.equal(pope.tokens, default.tokens) and pope.lengths.tolist() == [87, 87]
    assert torch.equal(live.kept_index, pope.kept_index) and torch.equal(live.assignment, pope.assignment)
    contextual = slice(55, 87)  # CLS + 54 dominant, then the merged tokens: plain vs attention-weighted means
    assert torch.equal(live.tokens[:, :55], pope.tokens[:, :55])
    assert not torch.allclose(live.tokens[:, contextual], pope.tokens[:, contextual])
    members = live.assignment[0] == 55  # the first contextual slot's members, in source order
    assert torch.allclose(live.tokens[0, 55], ctx.hidden[0, members].mean(0), atol=1e-6)
    mme = get_method("sparsezip", **load_preset("mme"))(ctx)
    assert not torch.equal(mme.kept_index, pope.kept_index)  # cross_beta 0.1 vs 0.3 picks other patches


def test_presets_are_valid_seed_layout_yaml_without_duplicates() -> None:
    folder = Path(__file__).resolve().parents[1] / "sparsezip" / "methods" / "sparsezip" / "presets"
    for name in list_presets():
        block = load_yaml(folder / f"{name}.yaml")
        assert block == load_preset(name)
        SparseZipConfig.from_dict(block)


def test_duplicate_keys_in_the_block_are_refused_naming_both_values(tmp_path: Path) -> None:
    assert yaml.safe_load(MME_LIKE)["model"]["sparsezip"]["cross_beta"] == 0.1  # what YAML does silently
    path = tmp_path / "sparsezip_mme.yaml"
    path.write_text(MME_LIKE)
    with pytest.raises(ValueError, match=r"sparsezip_mme\.yaml: duplicate key 'model\.sparsezip\.cross_beta' "
                                         r"\(line 4: '0\.3', again on line 8: '0\.1'\)") as err:
        load_yaml(path)
    assert "runner.seed" not in str(err.value)  # other tools' sections are not ours to judge


@pytest.mark.parametrize("text", [
    "model:\n  sparsezip: {}\nmodel:\n  sparsezip: {cross_beta: 0.1}\n",
    "model:\n  sparsezip:\n    merging: {kmeans_iters: 1, kmeans_iters: 2}\n",
    "model:\n  sparsezip: {alphas: {attn: 1.0}, alphas: {attn: 2.0}}\n",
])  # fmt: skip
def test_duplicates_on_the_way_to_and_deep_in_the_block(text: str) -> None:
    with pytest.raises(ValueError, match="duplicate key 'model"):
        parse_yaml(text)


def test_resolve_config_takes_a_path_or_a_preset_name(tmp_path: Path) -> None:
    assert resolve_config("mme") == load_preset("mme")
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  sparsezip:\n    cross_beta: 0.2\n")
    assert resolve_config(path) == resolve_config(str(path)) == {"cross_beta": 0.2}
    with pytest.raises(ValueError, match=r"'popee' is neither a YAML file nor a preset; presets: docvqa, mme"):
        resolve_config("popee")
    with pytest.raises(ValueError, match="unknown SparseZip preset 'x'"):
        load_preset("x")


def test_eval_takes_a_preset_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eval_command, "model_plan", lambda args: FakeModelPlan(FakeVisionLanguageModel()))
    data = write_tree("mme", "files", tmp_path / "data")
    args = ["eval", "--dataset", "mme", "--data", str(data), "--model-path", "unused", "--method", "sparsezip",
            "--budget", "8", "--no-progress"]
    assert main([*args, "--config", "seed-live-mme", "--out", str(tmp_path / "run")]) == 0
    run = yaml.safe_load((tmp_path / "run" / "run.json").read_text())  # JSON is YAML
    assert run["method_config"]["cross_beta"] == 0.1 and run["method_config"]["merging"]["attention_weighted"] is False
    assert main([*args, "--config", "nonesuch", "--out", str(tmp_path / "bad")]) == 2
    assert "'nonesuch' is neither a YAML file nor a preset" in capsys.readouterr().err
