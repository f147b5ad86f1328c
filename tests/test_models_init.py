"""`model.init_scheme='torch'`: PyTorch's default initialisation, checked against its formulas
(nn.Embedding N(0, 1); nn.Linear and nn.GRU uniform bounds 1/sqrt(fan_in) and 1/sqrt(H))."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from flax import traverse_util

from seq2seq_jax import models
from seq2seq_jax.models import init as model_init
from seq2seq_jax.training import trainer


def reference_params():
    model = models.build_model(models.rnnsearch_reference_config())
    return models.init_variables(model, jax.random.PRNGKey(0))["params"]


def expected_bound(path, flat):
    """PyTorch's uniform bound of a leaf, from the layer it belongs to (None: not uniform)."""
    name, parent = path[-1], path[:-1]
    if parent[-1] in ("input", "hidden"):  # A GRU cell: 1/sqrt(hidden size), as nn.GRU.
        return 1 / math.sqrt(flat[parent[:-1] + ("hidden", "kernel")].shape[0])
    if name == "kernel":
        return 1 / math.sqrt(flat[path].shape[0])
    if name == "bias":
        return 1 / math.sqrt(flat[parent + ("kernel",)].shape[0])
    if name == "v":
        return 1 / math.sqrt(flat[path].shape[-1])
    return None


def test_torch_style_matches_pytorch_rules():
    flat = traverse_util.flatten_dict(reference_params())
    torch_flat = traverse_util.flatten_dict(
        model_init.torch_style(reference_params(), jax.random.PRNGKey(1))
    )
    assert torch_flat.keys() == flat.keys()
    checked = 0
    for path, leaf in torch_flat.items():
        leaf = np.asarray(leaf)
        assert leaf.shape == flat[path].shape and leaf.dtype == flat[path].dtype
        if path[-1] == "embedding":
            assert abs(leaf.std() - 1.0) < 0.01 and abs(leaf.mean()) < 0.01, path
            checked += 1
            continue
        bound = expected_bound(path, flat)
        assert bound is not None, f"unexpected leaf {path}"
        # U(-b, b): inside the bound, reaching close to it, std b / sqrt(3).
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.95 * bound, path
        np.testing.assert_allclose(leaf.std(), bound / math.sqrt(3), rtol=0.15, err_msg=path)
        checked += 1
    assert checked == len(flat)


def test_init_train_state_follows_the_config_scheme():
    import optax

    cfg = models.rnnsearch_reference_config(
        emb_dim=32,
        encoder_hidden_size=16,
        decoder_hidden_size=32,
        attention_dim=32,
        source_vocab_size=50,
        target_vocab_size=50,
    )
    states = {}
    for scheme in ("flax", "torch"):
        model = models.build_model(cfg.replace(init_scheme=scheme))
        states[scheme], _ = trainer.init_train_state(model, optax.sgd(0.1), seed=0)
    flax_std = float(np.std(states["flax"].params["source_embed"]["embedding"]))
    torch_std = float(np.std(states["torch"].params["source_embed"]["embedding"]))
    assert flax_std < 0.3 and abs(torch_std - 1.0) < 0.1  # Flax N(0, 1/E) vs PyTorch N(0, 1)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="init_scheme='xavier' is not one of"):
        models.rnnsearch_reference_config(init_scheme="xavier")
    with pytest.raises(ValueError, match="init_scheme='xavier'"):
        model_init.apply_scheme("xavier", {}, jax.random.PRNGKey(0))
