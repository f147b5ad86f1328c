"""`DataConfig`: `config.data` parsed once into a frozen, typed config with one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from seq2seq_jax import data
from seq2seq_jax.data import config as config_lib


def test_fields_are_the_config_keys_and_frozen():
    defaults = data.default_data_config()
    parsed = data.DataConfig.from_config(defaults)
    assert {f.name for f in dataclasses.fields(parsed)} == set(defaults.keys())
    for key in defaults.keys():
        if key not in ("date_languages", "bucket_boundaries"):
            assert getattr(parsed, key) == defaults[key], key
    assert parsed.date_languages == ("en", "fr", "de", "es")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.batching = "pack"
    assert data.validate_data_config(parsed) is parsed, "a parsed config is not checked again"
    assert config_lib.parse(parsed) is parsed


def test_normalised_values_and_derived_lengths():
    c = data.default_data_config().to_dict()
    c.update(bucket_boundaries="8, 12,20", max_source_length=16, max_target_length=24, tfds_name="")
    parsed = data.DataConfig.from_config(c)
    assert parsed.bucket_boundaries == (8, 12, 20) and parsed.tfds_name is None
    assert parsed.side_boundaries == ((8, 12, 16), (8, 12, 20, 24))
    assert parsed.length_classes == (8, 12, 20, 24) and parsed.max_lengths == (16, 24)
    c.update(bucket_boundaries=(), tokens_per_batch=512)
    assert data.DataConfig.from_config(c).length_classes == (8, 10, 12, 14, 16, 20, 24)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prefetch": -1}, "config.data.prefetch must be an int >= 0, got -1"),
        ({"num_train_examples": 1.5}, "config.data.num_train_examples must be an int >= 0"),
        ({"spm_max_sentences": 0}, "config.data.spm_max_sentences must be a positive int"),
        ({"spm_character_coverage": 1.5}, "config.data.spm_character_coverage must be in (0, 1]"),
        ({"shuffle_seed": "7"}, "config.data.shuffle_seed must be an int or None"),
        ({"bucket_boundaries": "8,x"}, "config.data.bucket_boundaries must be strictly increasing"),
        (
            {"name": "parallel_text", "train_source": "a.de"},
            "config.data.train_source and train_target must be set together",
        ),
        (
            {
                "name": "parallel_text",
                "validation_tsv": "v.tsv",
                "validation_source": "v.de",
                "validation_target": "v.en",
            },
            "config.data.validation_tsv and validation_source/target",
        ),
        ({"name": "tfds"}, "config.data.name='tfds' needs config.data.tfds_name"),
        (
            {"name": "tfds", "tfds_name": "x/y"},
            "config.data.name='tfds' needs config.data.inputs_key",
        ),
        (
            {"batching": "pack", "tokens_per_batch": 64},
            "tokens_per_batch=64 needs batching='bucket'",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, message):
    values = {**data.default_data_config().to_dict(), **overrides}  # A plain mapping works too.
    with pytest.raises(ValueError) as error:
        data.DataConfig.from_config(values)
    assert message in str(error.value) and "\n" not in str(error.value)
