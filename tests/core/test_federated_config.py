"""FederatedConfig: built by OmegaConf from YAML-like input, and checked field by field."""

import pytest
from omegaconf import OmegaConf

from fedsim.core.coordinator import FederatedConfig


def test_omegaconf_builds_a_federated_config_with_overrides():
    # Prepare: the schema, as Hydra would hold it, and values as a command line would give.
    schema = OmegaConf.structured(FederatedConfig)
    overrides = OmegaConf.from_dotlist(["batch_size=8", "mode=async"])
    # Execute
    node = OmegaConf.merge(schema, {"buffer_size": 3, "aggregators": {1: 2}}, overrides)
    fl = OmegaConf.to_object(node)
    # Assert
    assert isinstance(fl, FederatedConfig)
    assert (fl.buffer_size, fl.batch_size, fl.mode) == (3, 8, "async")
    assert fl.aggregators == {1: 2}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"rounds": 0}, "rounds"),
        ({"fraction_per_round": 1.5}, "fraction_per_round"),
        ({"mode": "turbo"}, "mode"),
        ({"aggregators": {1: -2}}, "aggregators"),
        ({"aggregators": {-1: 2}}, "aggregators"),
        ({"staleness_exponent": -0.5}, "staleness_exponent"),
        ({"group_deadline_s": 0.0}, "group_deadline_s"),
        ({"max_update_norm": -1.0}, "max_update_norm"),
        ({"mode": "async", "hierarchical": True}, "hierarchical"),
    ],
)
def test_a_bad_value_raises_value_error_naming_the_field(values, field):
    # Prepare
    node = OmegaConf.merge(OmegaConf.structured(FederatedConfig), values)
    # Execute
    with pytest.raises(ValueError) as raised:
        OmegaConf.to_object(node)
    # Assert: the message starts with the field, as the composition root prefixes it with "fl.".
    assert str(raised.value).startswith(f"{field}: ")


def test_defaults_are_the_user_facing_ones():
    # Prepare / Execute
    fl = FederatedConfig()
    # Assert: one set of defaults, the ones the YAML schema always had.
    assert (fl.rounds, fl.batch_size, fl.buffer_size, fl.aggregators) == (20, 16, 4, {})


def test_per_round_takes_a_count_or_a_fraction_of_at_least_one():
    assert FederatedConfig(clients_per_round=3).per_round(10) == 3
    assert FederatedConfig(clients_per_round=30).per_round(10) == 10
    assert FederatedConfig(fraction_per_round=0.25).per_round(10) == 3
    assert FederatedConfig(fraction_per_round=0.01).per_round(10) == 1
