"""Config strictness: unknown keys (at any depth) and wrong types are errors naming the dotted key."""

from pathlib import Path

import pytest

from sparsezip import get_method
from sparsezip.methods.sparsezip.config import SparseZipConfig, load_yaml

SEED_YAML = """\
model:
  name: llava-v1.5-7b
  sparsezip:
    dynamic_k: false
    k_min: 32
    k_max: 64
    dynk: {c: 12, eps: 1.0e-6}
    dominant: 54
    keep_cls: true
    alphas: {attn: 1.0, entropy: 0.8, mutual: 1.0}
    tau_feat: 0.15
    tau_sim: 0.08
    cross_beta: 0.1
    merging:
      contextual_num: 32
      kmeans_init_factor: 2.0
      kmeans_iters: 1
      agglomerative: false
      attention_weighted: true
    layer: -2
eval:
  dataset: mme
"""


def test_defaults_are_the_seeds_tuned_values() -> None:
    cfg = SparseZipConfig()
    assert (cfg.alphas.attn, cfg.alphas.entropy, cfg.alphas.mutual) == (1.0, 0.8, 1.0)
    assert (cfg.tau_feat, cfg.tau_sim, cfg.cross_beta) == (0.15, 0.08, 0.3)
    assert (cfg.dominant, cfg.k_min, cfg.k_max, cfg.dynk.c, cfg.dynk.scale) == (54, 32, 64, 12.0, 1.0)
    assert (cfg.merging.contextual_num, cfg.merging.kmeans_init_factor, cfg.merging.kmeans_iters) == (32, 2.0, 1)
    assert not cfg.dynamic_k and not cfg.merging.agglomerative and cfg.keep_cls and cfg.merging.attention_weighted


def test_seed_yaml_loads_as_is_and_builds_the_method(tmp_path: Path) -> None:
    path = tmp_path / "pope.yaml"
    path.write_text(SEED_YAML)
    block = load_yaml(path)
    assert block["cross_beta"] == 0.1 and block["merging"]["contextual_num"] == 32
    method = get_method("sparsezip", **block)
    assert method.cfg.cross_beta == 0.1 and method.cfg.dynk.c == 12.0 and isinstance(method.cfg.dynk.c, float)
    assert SparseZipConfig.from_dict(method.cfg.to_dict()) == method.cfg  # round trip


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"dominnt": 54}, r"unknown config key 'model\.sparsezip\.dominnt'"),
        ({"merging": {"contextual": 10}}, r"unknown config key 'model\.sparsezip\.merging\.contextual'"),
        ({"alphas": {"attn": 1.0, "text": 0.2}}, r"'model\.sparsezip\.alphas\.text'"),
        ({"dominant": "54"}, r"'model\.sparsezip\.dominant' must be an integer, got str"),
        ({"dominant": 54.0}, r"'model\.sparsezip\.dominant' must be an integer, got float"),
        ({"k_min": True}, r"'model\.sparsezip\.k_min' must be an integer, got bool"),
        ({"keep_cls": 1}, r"'model\.sparsezip\.keep_cls' must be true/false, got int"),
        ({"tau_feat": "0.1"}, r"'model\.sparsezip\.tau_feat' must be a number"),
        ({"dynk": {"c": float("nan")}}, r"'model\.sparsezip\.dynk\.c' must be finite"),
        ({"merging": 32}, r"'model\.sparsezip\.merging' must be a mapping, got int"),
        ({"k_min": 70}, r"k_min=70, k_max=64"),
        ({"tau_sim": 0}, r"tau_sim=0"),
        ({"merging": {"kmeans_iters": -1}}, r"'model\.sparsezip': merging\.kmeans_iters must be >= 0, got -1"),
    ],
)
def test_bad_blocks_are_value_errors_naming_the_key(block: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseZipConfig.from_dict(block)
    with pytest.raises(ValueError, match=message):
        get_method("sparsezip", **block)


def test_load_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  sparsezip:\n    merging: {kmeans_itrs: 2}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config key 'model\.sparsezip\.merging\.kmeans_itrs'"):
        load_yaml(bad)
    missing = tmp_path / "none.yaml"
    missing.write_text("model:\n  name: x\n")
    with pytest.raises(ValueError, match=r"none\.yaml: expected a mapping at 'model\.sparsezip'"):
        load_yaml(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: invalid YAML"):
        load_yaml(broken)
    with pytest.raises(ValueError, match="cannot read config file"):
        load_yaml(tmp_path / "absent.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_yaml(evil)
