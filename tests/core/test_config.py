from dataclasses import dataclass, field

import pytest

from papernotes.core.config import apply_overrides, from_dict, load_config, preset, save_config, to_dict
from papernotes.errors import ConfigError


@dataclass
class Inner:
    width: int = 4


@dataclass
class Outer:
    lr: float = 1e-3
    name: str = "a"
    inner: Inner = field(default_factory=Inner)
    tags: list[int] | None = None


PRESETS = {"tiny": Outer(lr=1.0), "base": Outer()}


def test_preset_returns_a_copy_and_unknown_names_list_the_valid_ones():
    cfg = preset(PRESETS, "tiny")
    assert cfg == PRESETS["tiny"] and cfg is not PRESETS["tiny"]
    with pytest.raises(ConfigError, match="expected one of: base, tiny"):
        preset(PRESETS, "huge")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_yaml_and_json_round_trip_nested_configs(tmp_path, suffix):
    cfg = Outer(lr=0.5, inner=Inner(width=7), tags=[1, 2])
    save_config(cfg, tmp_path / f"c{suffix}")
    assert load_config(Outer, tmp_path / f"c{suffix}") == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_overrides_parse_yaml_scalars_and_nested_fields():
    cfg = apply_overrides(Outer(), ["lr=3e-4", "inner.width=9", "tags=[3, 4]", "name=b"])
    assert cfg == Outer(lr=3e-4, name="b", inner=Inner(9), tags=[3, 4])


def test_bad_config_input_names_the_field_or_file(tmp_path):
    with pytest.raises(ConfigError, match="has no field 'lrr'"):
        apply_overrides(Outer(), ["lrr=1"])
    with pytest.raises(ConfigError, match="expected the form field=value"):
        apply_overrides(Outer(), ["lr"])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['bogus'\]"):
        from_dict(Outer, {"bogus": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("lr: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid"):
        load_config(Outer, tmp_path / "bad.yaml")
