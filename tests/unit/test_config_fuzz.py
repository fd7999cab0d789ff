"""Fuzz: whatever a user writes in a config file or on the command line, the only error is ConfigError."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.config import SFTConfig, from_dict, load_config
from alignlab.errors import ConfigError

KEYS = ["train", "model", "data", "lr", "lora", "enabled", "r", "max_length", "seed", "train.lr", "model.lora.r", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=3), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), c, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=4))
def test_from_dict_raises_only_config_error(tree):
    try:
        from_dict(SFTConfig, tree)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(max_size=20) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=10)),
        max_size=4,
    )
)
def test_overrides_raise_only_config_error(overrides):
    try:
        load_config(SFTConfig, None, overrides)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_yaml_file_bytes_raise_only_config_error(tmp_path, data):
    f = tmp_path / "c.yaml"
    f.write_bytes(data)
    try:
        load_config(SFTConfig, f)
    except ConfigError:
        pass
