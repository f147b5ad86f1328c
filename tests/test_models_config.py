"""ModelConfig, presets, registry and shift_right."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from seq2seq_jax.models import (
    EncoderDecoder,
    ModelConfig,
    RNNSearch,
    Transformer,
    build_model,
    check_batching,
    config_keys,
    default_model_config,
    get_model_class,
    preset_names,
    rnnsearch_reference_config,
    shift_right,
)

VOCAB = dict(source_vocab_size=20, target_vocab_size=24, bos_id=1, eos_id=2)


def test_from_config_round_trip_and_replace_variants():
    cfg = default_model_config("transformer")
    assert set(cfg.keys()) == set(config_keys())
    cfg.num_heads = 2
    model_config = ModelConfig.from_config(cfg, **VOCAB)
    assert model_config.name == "transformer" and model_config.num_heads == 2
    assert model_config.target_vocab_size == 24 and model_config.pad_id == 0
    eval_config = model_config.replace(deterministic=True, dropout_rate=0.0)
    assert eval_config.deterministic and not model_config.deterministic
    # hashable and a static pytree (no leaves): usable as a jit static argument
    assert hash(eval_config) != hash(model_config)
    assert jax.tree.leaves(model_config) == []
    assert {model_config: 1}[ModelConfig.from_config(cfg, **VOCAB)] == 1


def test_from_config_rejects_unknown_key_naming_it():
    cfg = default_model_config("rnnsearch")
    cfg.hiden_size = 3
    with pytest.raises(ValueError, match="model.hiden_size"):
        ModelConfig.from_config(cfg, **VOCAB)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("cell_type", "rnn", "cell_type='rnn'"),
        ("attention_type", "location", "attention_type"),
        ("bridge", "first", "bridge"),
        ("dropout_rate", 1.5, "dropout_rate"),
        ("dtype", "float77", "dtype"),
        ("maxout_size", 5, "tie_output_embeddings"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_name(key, value, match):
    cfg = default_model_config("rnnsearch")
    cfg[key] = value
    if key == "maxout_size":
        cfg.tie_output_embeddings = True
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_config(cfg, **VOCAB)


def test_output_product_choice_and_its_logits():
    cfg = default_model_config("rnnsearch")
    cfg.output_product = "bf16"
    with pytest.raises(ValueError, match=r"output_product='bf16' is not one of"):
        ModelConfig.from_config(cfg, **VOCAB)
    cfg.output_product, cfg.tie_output_embeddings = "bfloat16_forward", True
    with pytest.raises(ValueError, match="tie_output_embeddings=True needs output_product"):
        ModelConfig.from_config(cfg, **VOCAB)
    # Both families: the same parameters give logits within bfloat16 rounding of float32's.
    for family in ("rnnsearch", "transformer"):
        cfg = default_model_config(family)
        base = ModelConfig.from_config(cfg, **VOCAB)
        fast = base.replace(output_product="bfloat16_forward")
        inputs = np.asarray([[3, 4, 5, 2], [6, 7, 2, 0]], np.int32)
        targets = np.asarray([[8, 9, 2], [10, 2, 0]], np.int32)
        params = build_model(base).init(jax.random.PRNGKey(0), inputs, targets)
        want = build_model(base).apply(params, inputs, targets)
        got = build_model(fast).apply(params, inputs, targets)
        want, got = (np.asarray(x[0] if isinstance(x, tuple) else x) for x in (want, got))
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())
        assert not np.array_equal(got, want)


def test_share_embeddings_needs_equal_vocabularies_and_heads_divide_width():
    cfg = default_model_config("transformer")
    cfg.share_embeddings = True
    with pytest.raises(ValueError, match="equal vocabularies"):
        ModelConfig.from_config(cfg, **VOCAB)
    cfg = default_model_config("transformer")
    cfg.num_heads = 3
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig.from_config(cfg, **VOCAB)


def test_presets_and_unknown_preset():
    for name in preset_names():
        ModelConfig.from_config(default_model_config(name), **VOCAB)
    with pytest.raises(ValueError, match="rnnsearch_reference"):
        default_model_config("rnnsearch_huge")
    ref = rnnsearch_reference_config()
    assert (ref.emb_dim, ref.encoder_hidden_size, ref.decoder_hidden_size) == (256, 256, 512)
    assert ref.source_vocab_size == ref.target_vocab_size == 8000
    assert rnnsearch_reference_config(dtype="bfloat16").dtype == "bfloat16"
    big = default_model_config("rnnsearch50")
    assert (big.emb_dim, big.decoder_hidden_size, big.maxout_size) == (620, 1000, 500)


def test_registry():
    assert get_model_class("rnnsearch") is RNNSearch
    assert get_model_class("transformer") is Transformer
    with pytest.raises(ValueError, match=r"'rnnsearch', 'transformer'"):
        get_model_class("lstm_lm")
    model = build_model(ModelConfig.from_config(default_model_config("transformer"), **VOCAB))
    assert isinstance(model, Transformer)
    # a ConfigDict locked like the experiment configs works too
    locked = ml_collections.ConfigDict(default_model_config("rnnsearch").to_dict())
    locked.lock()
    assert ModelConfig.from_config(locked, **VOCAB).name == "rnnsearch"


def test_capabilities_are_declared_on_the_model_classes():
    assert issubclass(RNNSearch, EncoderDecoder) and issubclass(Transformer, EncoderDecoder)
    assert RNNSearch.supports_packing is False and Transformer.supports_packing is True
    cfg = ModelConfig.from_config(default_model_config("transformer_multi30k"), **VOCAB)
    assert Transformer.max_length(cfg) == 256 and RNNSearch.max_length(cfg) is None
    # One __call__ / decode for both families: the subclasses do not redefine them.
    for cls in (RNNSearch, Transformer):
        assert "__call__" not in vars(cls) and "decode" not in vars(cls)


def test_check_batching_rejects_packing_for_a_recurrent_family_in_one_line():
    for name in ("rnnsearch", "rnnsearch_reference", "rnnsearch50"):
        with pytest.raises(
            ValueError,
            match=r"config\.data\.batching='pack' is not supported by "
            rf"config\.model\.name='{name}' \(RNNSearch\.supports_packing",
        ) as e:
            check_batching(name, "pack")
        assert "\n" not in str(e.value)
        check_batching(name, "bucket")
        check_batching(name, "pad")
    for name in ("transformer", "transformer_multi30k"):
        check_batching(name, "pack")
    check_batching("lstm_of_doom", "pack")  # An unknown name is ModelConfig.validate's error.


def _shift_reference(targets, segmentation, bos):
    """Brute force: walk each row, BOS at every segment start, pad on padding."""
    out = np.zeros_like(targets)
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            seg = segmentation[b, t]
            if seg == 0:
                continue
            start = t == 0 or segmentation[b, t - 1] != seg
            out[b, t] = bos if start else targets[b, t - 1]
    return out


def test_shift_right_packed_and_unpacked():
    targets = np.array([[5, 6, 2, 7, 2, 8, 9, 2, 0, 0], [4, 2, 0, 0, 0, 0, 0, 0, 0, 0]])
    segmentation = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    got = shift_right(targets, bos_id=1, segmentation=segmentation)
    want = _shift_reference(targets, segmentation, 1)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert np.asarray(got)[0].tolist() == [1, 5, 6, 1, 7, 1, 8, 9, 0, 0]
    # unpacked: segmentation derived from padding
    unpacked = shift_right(targets[1:], bos_id=3)
    np.testing.assert_array_equal(
        np.asarray(unpacked), _shift_reference(targets[1:], (targets[1:] != 0).astype(int), 3)
    )
