"""Params-only restore for fine-tuning and decoding: equality, fresh optimizer, freezing,
vocabulary extension and the errors for mismatches, missing paths and corrupt checkpoints."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seq2seq_jax.training import optim
from seq2seq_jax.training.checkpoint import (
    CHECKPOINT_DIRNAME,
    COMMIT_MARKER,
    Checkpointer,
    CheckpointError,
    restore_params,
)
from seq2seq_jax.training.state import TrainState


class Tiny(nn.Module):
    """Embed [V, E] -> hidden Dense [E, H] -> output Dense [H, V] (+ an optional extra layer)."""

    vocab: int = 11
    emb: int = 4
    extra: bool = False

    @nn.compact
    def __call__(self, ids):  # [B] -> [B, V]
        h = nn.Dense(5, name="hidden")(nn.Embed(self.vocab, self.emb, name="embed")(ids))
        if self.extra:
            h = nn.Dense(5, name="adapter")(h)
        return nn.Dense(self.vocab, name="out")(jnp.tanh(h))


def init_params(seed: int = 0, **kw):
    return Tiny(**kw).init(jax.random.PRNGKey(seed), jnp.zeros((2,), jnp.int32))["params"]


def trained_checkpoint(workdir, steps: int = 3, **kw):
    """A short Adam run saved in `workdir`; returns its final state."""
    model = Tiny(**kw)
    state = TrainState.create(
        apply_fn=model.apply,
        params=init_params(0, **kw),
        tx=optax.adam(0.1),
        rng=jax.random.PRNGKey(0),
    )
    ids = jnp.arange(6) % model.vocab
    grad_fn = jax.grad(lambda p: model.apply({"params": p}, ids).sum())
    for _ in range(steps):
        state = state.apply_gradients(grad_fn(state.params))
    with Checkpointer(workdir, save_every_steps=1) as ckpt:
        ckpt.save(steps, state)
    return state


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_params_only_restore_equal_params_fresh_optimizer(tmp_path):
    saved = trained_checkpoint(tmp_path / "pre")
    fresh = init_params(seed=5)
    params = restore_params(tmp_path / "pre", fresh)
    assert_trees_equal(params, saved.params)
    # The same from the step directory.
    step_dir = tmp_path / "pre" / CHECKPOINT_DIRNAME / "3"
    assert_trees_equal(restore_params(step_dir, fresh), saved.params)
    # A fine-tuning state built on them starts its optimizer, step and schedule afresh.
    state = TrainState.create(
        apply_fn=Tiny().apply, params=params, tx=optax.adam(0.1), rng=jax.random.PRNGKey(1)
    )
    assert int(state.step) == 0
    assert int(state.opt_state[0].count) == 0
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state[0].mu))
    assert int(saved.opt_state[0].count) == 3


def test_abstract_target_and_sharding(tmp_path):
    saved = trained_checkpoint(tmp_path)
    device = jax.devices()[0]
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
        ),
        init_params(),
    )
    params = restore_params(tmp_path, abstract)
    assert_trees_equal(params, saved.params)
    assert all(
        isinstance(x, jax.Array) and x.sharding.device_set == {device}
        for x in jax.tree.leaves(params)
    )


def test_frozen_paths_unchanged_after_finetuning(tmp_path):
    saved = trained_checkpoint(tmp_path)
    config = optim.default_optimizer_config()
    config.learning_rate = 0.1
    config.freeze = "^embed/|^hidden/"
    tx, _ = optim.make_optimizer(config, num_train_steps=10)
    params = restore_params(tmp_path, init_params(seed=9))
    state = TrainState.create(
        apply_fn=Tiny().apply, params=params, tx=tx, rng=jax.random.PRNGKey(0)
    )
    ids = jnp.arange(6) % 11
    grad_fn = jax.jit(jax.grad(lambda p: Tiny().apply({"params": p}, ids).sum()))
    for _ in range(3):
        state = state.apply_gradients(grad_fn(state.params))
    assert_trees_equal(state.params["embed"], saved.params["embed"])
    assert_trees_equal(state.params["hidden"], saved.params["hidden"])
    assert not np.array_equal(state.params["out"]["kernel"], saved.params["out"]["kernel"])


def test_shape_mismatch_names_path_and_both_shapes(tmp_path):
    trained_checkpoint(tmp_path)
    with pytest.raises(ValueError) as error:
        restore_params(tmp_path, init_params(vocab=15))
    message = str(error.value)
    assert str(tmp_path / CHECKPOINT_DIRNAME / "3") in message
    for expected in (
        "embed/embedding: checkpoint shape (11, 4) != model shape (15, 4)",
        "out/kernel: checkpoint shape (5, 11) != model shape (5, 15)",
        "out/bias: checkpoint shape (11,) != model shape (15,)",
    ):
        assert expected in message


def test_missing_and_unexpected_parameters_are_named(tmp_path):
    trained_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="parameter adapter/kernel missing from the checkpoint"):
        restore_params(tmp_path, init_params(extra=True))
    trained_checkpoint(tmp_path / "extra", extra=True)
    with pytest.raises(ValueError, match=r"checkpoint parameter adapter/bias \(5,\) not in"):
        restore_params(tmp_path / "extra", init_params())


def test_extend_vocab_keeps_old_rows_and_initialises_new_ones(tmp_path):
    saved = trained_checkpoint(tmp_path)
    fresh = init_params(seed=4, vocab=15)
    params = restore_params(tmp_path, fresh, extend_vocab=True)
    old, new = saved.params, fresh
    np.testing.assert_array_equal(params["embed"]["embedding"][:11], old["embed"]["embedding"])
    np.testing.assert_array_equal(params["embed"]["embedding"][11:], new["embed"]["embedding"][11:])
    np.testing.assert_array_equal(params["out"]["kernel"][:, :11], old["out"]["kernel"])
    np.testing.assert_array_equal(params["out"]["kernel"][:, 11:], new["out"]["kernel"][:, 11:])
    np.testing.assert_array_equal(params["out"]["bias"][:11], old["out"]["bias"])
    np.testing.assert_array_equal(params["out"]["bias"][11:], new["out"]["bias"][11:])
    assert_trees_equal(params["hidden"], old["hidden"])


def test_extend_vocab_rejects_other_shape_changes(tmp_path):
    trained_checkpoint(tmp_path)
    # A wider embedding is not a vocabulary: embed [11, 4] -> [11, 6] and hidden [4, 5] -> [6, 5].
    with pytest.raises(
        ValueError,
        match=r"hidden/kernel: checkpoint shape \(4, 5\) != model "
        r"shape \(6, 5\)",
    ):
        restore_params(tmp_path, init_params(emb=6), extend_vocab=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), init_params(vocab=15))
    with pytest.raises(ValueError, match="extend_vocab needs initialised target parameters"):
        restore_params(tmp_path, abstract, extend_vocab=True)


def test_missing_incomplete_and_corrupt_checkpoints_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        restore_params(tmp_path / "absent", init_params())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no complete checkpoint in {tmp_path}/empty"):
        restore_params(tmp_path / "empty", init_params())
    trained_checkpoint(tmp_path / "run")
    step_dir = tmp_path / "run" / CHECKPOINT_DIRNAME / "3"
    (step_dir / COMMIT_MARKER).unlink()
    with pytest.raises(CheckpointError, match=f"incomplete checkpoint .*: {step_dir}"):
        restore_params(step_dir, init_params())
    (step_dir / COMMIT_MARKER).write_text("ok")
    (step_dir / "state" / "_METADATA").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint {step_dir}"):
        restore_params(step_dir, init_params())


def _finetune_module():
    import configs.finetune

    return configs.finetune


@pytest.mark.parametrize("variant", [None, "tiny"])
def test_finetune_config_validates_and_documents_its_commands(variant):
    from seq2seq_jax.training import experiment

    module = _finetune_module()
    doc = module.__doc__
    assert "--config=configs/default.py" in doc and "--config=configs/finetune.py" in doc
    assert "Expected" in doc and "init_checkpoint" in doc
    config = module.get_config(variant)
    experiment.validate_config(config)
    import configs.default

    default = configs.default.get_config(variant)
    assert config.model.to_dict() == default.model.to_dict()  # the pre-trained architecture
    assert config.data.tokenizer == default.data.tokenizer
    assert config.batch_size % 8 == 0
    # The vocabulary follows --config.init_checkpoint (a locked config, as the CLI builds it).
    config.lock()
    config.init_checkpoint = "/runs/pretrained"
    assert config.data.tokenizer_dir == "/runs/pretrained/tokenizer"
    # The freeze regex names the target side of the RNNsearch: its embedding and output layer.
    from seq2seq_jax import models
    from seq2seq_jax.training import trainer

    model = models.build_model(
        models.ModelConfig.from_config(
            config.model, source_vocab_size=30, target_vocab_size=20, bos_id=1, eos_id=2
        )
    )
    batch = trainer.dummy_batch(4, 4)
    params = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), batch["inputs"], batch["targets"], train=False)
    )["params"]
    assert optim.frozen_paths(params, config.optimizer.freeze) == [
        "output/bias",
        "output/kernel",
        "target_embed/embedding",
    ]
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("huge")
