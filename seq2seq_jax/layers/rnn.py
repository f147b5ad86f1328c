"""Recurrent layers: fused GRU / LSTM cells and padding-correct (bi)directional encoders.

Shape glossary: B batch, L sequence length, D input width, H hidden units, G gates
(3 for GRU, 4 for LSTM).

The cells keep the cuDNN / PyTorch parameter convention (an input kernel [D, G*H] with bias and
a hidden kernel [H, G*H] with bias, gates in PyTorch order r, z, n / i, f, g, o), so parameter
counts match `torch.nn.GRU` / `torch.nn.LSTM` exactly. The input projection is separate from the
recurrence (`RecurrentCell.project_inputs`): sequence layers compute it for all steps in one
matmul before the scan, and the scan only does the hidden-state matmul.

Padding: a sequence of length n occupies positions 0..n-1 (left-aligned). The forward direction
freezes its state after position n-1; the backward direction reverses each sequence within its
own length, so it starts at the last real token, and its outputs are reversed back. Outputs at
padding positions are zero.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from seq2seq_jax.ops import accumulate_in_float32

Array = chex.Array
Carry = Any  # GRU: h [B, H]; LSTM: (c [B, H], h [B, H])

_NUM_GATES = {"gru": 3, "lstm": 4}


def reverse_padded(x: Array, lengths: Array) -> Array:
    """Reverses each row's first `lengths[b]` positions; padding positions stay in place.

    Its own inverse.

    Args:
      x: [B, L, ...] a batch of sequences.
      lengths: int [B] real lengths.

    Returns:
      [B, L, ...] with x[b, n-1-t] at position t < n = lengths[b].
    """
    chex.assert_rank(lengths, 1)
    positions = jnp.arange(x.shape[1])[None, :]  # [1, L]
    index = jnp.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def carry_hidden(carry: Carry) -> Array:
    """The hidden state h [B, H] of a GRU (h) or LSTM ((c, h)) carry."""
    return carry[1] if isinstance(carry, tuple) else carry


class RecurrentCell(nn.Module):
    """A GRU or LSTM cell with fused gate kernels and PyTorch's bias convention.

    GRU:  r, z = sigmoid(x W_r + b_ir + h U_r + b_hr), sigmoid(...);
          n = tanh(x W_n + b_in + r * (h U_n + b_hn));  h' = (1 - z) * n + z * h.
    LSTM: i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x W + b_i + h U + b_h);
          c' = f * c + i * g;  h' = o * tanh(c').

    Attributes:
      cell_type: 'gru' or 'lstm'.
      hidden_size: H.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    cell_type: str
    hidden_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.cell_type not in _NUM_GATES:
            raise ValueError(f"cell_type={self.cell_type!r} is not one of {list(_NUM_GATES)}")
        features = _NUM_GATES[self.cell_type] * self.hidden_size
        self.input = nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=accumulate_in_float32,
        )
        self.hidden = nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.lecun_normal(),
            dot_general=accumulate_in_float32,
        )

    def project_inputs(self, x: Array) -> Array:
        """x W + b_i for any leading shape: [..., D] -> [..., G*H]."""
        return self.input(x)

    def zero_carry(self, batch_size: int) -> Carry:
        """The all-zero state for `batch_size` rows."""
        h = jnp.zeros((batch_size, self.hidden_size), self.dtype)
        return (h, h) if self.cell_type == "lstm" else h

    def __call__(self, carry: Carry, projected_inputs: Array) -> tuple[Carry, Array]:
        """One step.

        Args:
          carry: the previous state (`zero_carry` structure).
          projected_inputs: [B, G*H], `project_inputs(x_t)` plus any other input projections.

        Returns:
          (new carry, h' [B, H]).
        """
        h = carry_hidden(carry)
        hp = self.hidden(h)  # [B, G*H]
        if self.cell_type == "gru":
            xr, xz, xn = jnp.split(projected_inputs, 3, axis=-1)
            hr, hz, hn = jnp.split(hp, 3, axis=-1)
            r = nn.sigmoid(xr + hr)
            z = nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            new_h = ((1.0 - z) * n + z * h).astype(self.dtype)
            return new_h, new_h
        c = carry[0]
        i, f, g, o = jnp.split(projected_inputs + hp, 4, axis=-1)
        new_c = (nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)).astype(self.dtype)
        new_h = (nn.sigmoid(o) * jnp.tanh(new_c)).astype(self.dtype)
        return (new_c, new_h), new_h


def _masked_step(cell: RecurrentCell, carry: Carry, inputs: tuple[Array, Array]):
    """Scan body: one step, state frozen and output zeroed where `valid` is False."""
    projected, valid = inputs  # [B, G*H], [B]
    new_carry, h = cell(carry, projected)
    keep = valid[:, None]
    new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
    return new_carry, jnp.where(keep, h, jnp.zeros_like(h))


class RecurrentLayer(nn.Module):
    """One direction of one recurrent layer over a padded batch.

    Attributes:
      cell_type: 'gru' or 'lstm'.
      hidden_size: H.
      reverse: read each sequence from its last real token to its first.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    cell_type: str
    hidden_size: int
    reverse: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, lengths: Array) -> tuple[Array, Carry]:
        """Runs the layer.

        Args:
          x: [B, L, D] inputs (padding positions are ignored).
          lengths: int [B] real lengths.

        Returns:
          outputs [B, L, H] (zero on padding; in input order for both directions) and the final
          carry (forward: after position n-1; backward: after position 0).
        """
        chex.assert_rank(x, 3)
        chex.assert_shape(lengths, (x.shape[0],))
        cell = RecurrentCell(
            cell_type=self.cell_type,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="cell",
        )
        projected = cell.project_inputs(x)  # [B, L, G*H], all steps in one matmul
        if self.reverse:
            projected = reverse_padded(projected, lengths)
        valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, L]
        scan = nn.scan(
            _masked_step,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        carry, outputs = scan(cell, cell.zero_carry(x.shape[0]), (projected, valid))
        if self.reverse:
            outputs = reverse_padded(outputs, lengths)
        return outputs, carry


class RNNEncoder(nn.Module):
    """Stacked, optionally bidirectional GRU / LSTM encoder with dropout between layers.

    Attributes:
      cell_type: 'gru' or 'lstm'.
      hidden_size: H units per direction.
      num_layers: stacked layers.
      bidirectional: concatenate a backward direction (outputs of 2H).
      dropout_rate: dropout on each layer's input except the first (the caller drops embeddings).
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    cell_type: str = "gru"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, lengths: Array, *, deterministic: bool = True
    ) -> tuple[Array, tuple[Array, ...]]:
        """Encodes a padded batch.

        Args:
          x: [B, L, D] embedded inputs.
          lengths: int [B] real lengths.
          deterministic: disables dropout.

        Returns:
          annotations [B, L, dirs*H] (zero on padding) and the top layer's final hidden states:
          (h_forward_last [B, H],) or (h_forward_last, h_backward_first).
        """
        finals: tuple[Array, ...] = ()
        for layer in range(self.num_layers):
            if layer > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
            kwargs = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            fwd, fwd_carry = RecurrentLayer(
                cell_type=self.cell_type,
                hidden_size=self.hidden_size,
                name=f"layer_{layer}_fwd",
                **kwargs,
            )(x, lengths)
            finals = (carry_hidden(fwd_carry),)
            if self.bidirectional:
                bwd, bwd_carry = RecurrentLayer(
                    cell_type=self.cell_type,
                    hidden_size=self.hidden_size,
                    reverse=True,
                    name=f"layer_{layer}_bwd",
                    **kwargs,
                )(x, lengths)
                finals = finals + (carry_hidden(bwd_carry),)
                x = jnp.concatenate([fwd, bwd], axis=-1)  # [B, L, 2H]
            else:
                x = fwd
        return x, finals
