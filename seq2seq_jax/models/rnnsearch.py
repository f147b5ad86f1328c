"""RNNsearch (Bahdanau et al. 2015): a recurrent encoder-decoder with masked additive attention.

Shape glossary: B batch (N in incremental decoding), S source length, T target length,
E embedding width, C annotation width (2 x encoder units if bidirectional), H decoder units,
G gates (3 GRU, 4 LSTM), V target vocabulary.

Decoder step (Bahdanau, default): the query is the previous top-layer state s_{t-1};
    c_t = attend(s_{t-1});  s_t = cell([E y_{t-1}; c_t], s_{t-1});
    logits_t = out([s_t; c_t; E y_{t-1}])   (optionally through a maxout deep output).
With `input_feeding` (Luong): s_t = cell([E y_{t-1}; c_{t-1}], s_{t-1}); c_t = attend(s_t).
The initial state is the bridge tanh(W summary), summary = masked mean of the annotations
('mean'), [last forward; first backward] top encoder states ('final'), the first backward state
('backward', Bahdanau's s_0), or zero.

Efficiency: the attention key projection is computed once per source; the input projection of
the target embeddings runs for all steps in one matmul before the scan; the scan only does
the attention, the context part of the input projection and the hidden matmul; the output layer
runs once over all steps after the scan.

Packed rows are NOT supported by this family (a recurrence would carry state across examples):
`*_segmentation` is used only as a padding mask, and `RNNSearch.supports_packing` is False, so
the config check rejects `batching='pack'` for it (`registry.check_batching`). Sequences must be
left-aligned (padding at the end).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from seq2seq_jax.layers.attention import get_attention_class
from seq2seq_jax.layers.rnn import RecurrentCell, RNNEncoder, carry_hidden
from seq2seq_jax.models import inputs as model_inputs
from seq2seq_jax.models.base import EncoderDecoder
from seq2seq_jax.ops import accumulate_in_float32, output_product

Array = chex.Array


class RNNSearch(EncoderDecoder):
    """The RNNsearch encoder-decoder.

    Public methods: `__call__` (teacher forcing), `encode`, `decode` (both from
    `EncoderDecoder`), `init_decode_cache`, `decode_step`. Dropout uses the 'dropout' RNG stream
    when `train=True` and `config.deterministic` is False. No packed rows
    (`supports_packing = False`).

    Attributes:
      config: the model's `ModelConfig` (name 'rnnsearch').
    """

    supports_packing = False

    def setup(self) -> None:
        cfg = self.config.validate()
        dt, pdt = cfg.compute_dtype, cfg.parameter_dtype
        embed = dict(features=cfg.emb_dim, dtype=dt, param_dtype=pdt)
        self.source_embed = nn.Embed(cfg.source_vocab_size, **embed)
        self.target_embed = (
            self.source_embed if cfg.share_embeddings else nn.Embed(cfg.target_vocab_size, **embed)
        )
        self.encoder = RNNEncoder(
            cell_type=cfg.cell_type,
            hidden_size=cfg.encoder_hidden_size,
            num_layers=cfg.encoder_layers,
            bidirectional=cfg.bidirectional,
            dropout_rate=cfg.dropout_rate,
            dtype=dt,
            param_dtype=pdt,
        )
        dense = dict(dtype=dt, param_dtype=pdt)
        layer = dict(dense, dot_general=accumulate_in_float32)  # Dense layers; see ops
        hidden = cfg.decoder_hidden_size
        self.cells = [
            RecurrentCell(cell_type=cfg.cell_type, hidden_size=hidden, dtype=dt, param_dtype=pdt)
            for _ in range(cfg.decoder_layers)
        ]
        gates = self.cells[0].hidden_size * (3 if cfg.cell_type == "gru" else 4)
        # The context part of the first decoder layer's input kernel (its bias is in cells[0]).
        self.context_proj = nn.Dense(gates, use_bias=False, **layer)
        attention_cls = get_attention_class(cfg.attention_type)
        attention_kwargs = dict(
            attention_dim=cfg.attention_dim or hidden, num_heads=cfg.num_heads, **dense
        )
        if cfg.attention_type == "additive":
            attention_kwargs["normalize"] = cfg.normalize_attention
        self.attention = attention_cls(**attention_kwargs)
        if cfg.bridge != "zero":
            self.bridge = [nn.Dense(hidden, **layer) for _ in range(cfg.decoder_layers)]
        if cfg.maxout_size:
            self.maxout = nn.Dense(2 * cfg.maxout_size, **layer)
        elif cfg.tie_output_embeddings:
            self.readout = nn.Dense(cfg.emb_dim, **layer)
        if cfg.tie_output_embeddings:
            self.output_bias = self.param(
                "output_bias", nn.initializers.zeros, (cfg.target_vocab_size,), pdt
            )
        else:
            self.output = nn.Dense(
                cfg.target_vocab_size, dot_general=output_product(cfg.output_product), **dense
            )
        self.dropout = nn.Dropout(cfg.dropout_rate)

    # ----------------------------------------------------------------------------- encoder

    def _deterministic(self, train: bool) -> bool:
        return (not train) or self.config.deterministic or self.config.dropout_rate == 0.0

    def encode(
        self,
        inputs: Array,  # int [B, S]
        *,
        inputs_segmentation: Array | None = None,  # int [B, S]; only a padding mask here
        inputs_position: Array | None = None,  # unused by RNNs (checked only)
        train: bool = False,
    ) -> dict[str, Array]:
        """Encodes the source.

        Returns:
          {'annotations': [B, S, C] (zero on padding), 'summary': [B, C'] the bridge input}
          ('summary' absent with bridge='zero').
        """
        model_inputs.check_ids("inputs", inputs, inputs_segmentation, inputs_position)
        deterministic = self._deterministic(train)
        valid = model_inputs.valid_mask(inputs, inputs_segmentation, self.config.pad_id)
        lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)  # [B]
        x = self.dropout(self.source_embed(inputs), deterministic=deterministic)  # [B, S, E]
        annotations, finals = self.encoder(x, lengths, deterministic=deterministic)
        encoded = {"annotations": annotations}
        if self.config.bridge == "mean":
            total = jnp.sum(annotations.astype(jnp.float32), axis=1)  # [B, C], zero on padding
            count = jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
            encoded["summary"] = (total / count).astype(annotations.dtype)
        elif self.config.bridge == "final":
            encoded["summary"] = jnp.concatenate(finals, axis=-1)  # [B, dirs*H_enc]
        elif self.config.bridge == "backward":
            encoded["summary"] = finals[-1]  # [B, H_enc], backward state at position 0
        return encoded

    def _initial_state(self, encoded: dict[str, Array]) -> tuple[Any, ...]:
        """Per decoder layer: GRU h [B, H], LSTM (c = 0, h) from the bridge."""
        batch = encoded["annotations"].shape[0]
        states = []
        for layer, cell in enumerate(self.cells):
            zero = cell.zero_carry(batch)
            if self.config.bridge == "zero":
                states.append(zero)
                continue
            h = jnp.tanh(self.bridge[layer](encoded["summary"])).astype(self.config.compute_dtype)
            states.append((zero[0], h) if isinstance(zero, tuple) else h)
        return tuple(states)

    # ----------------------------------------------------------------------------- decoder

    def _attend(self, query, annotations, projected_keys, mask):
        context, weights = self.attention(query, annotations, mask, projected_keys=projected_keys)
        return context, model_inputs.head_mean(weights, self.config.num_heads)

    def _stack(self, state, x0, deterministic: bool):
        """Runs the stacked cells for one step; x0 = projected first-layer input [B, G*H]."""
        new_state = []
        x = x0
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                h = self.dropout(carry_hidden(new_state[-1]), deterministic=deterministic)
                x = cell.project_inputs(h)
            carry, _ = cell(state[layer], x)
            new_state.append(carry)
        return tuple(new_state)

    def _step(self, carry, emb_proj, annotations, projected_keys, mask, deterministic: bool):
        """One decoder step: (carry, emb_proj [B, G*H]) -> (carry, (s_t, c_t, weights))."""
        if self.config.input_feeding:
            x0 = emb_proj + self.context_proj(carry["context"])
            state = self._stack(carry["state"], x0, deterministic)
            context, weights = self._attend(
                carry_hidden(state[-1]), annotations, projected_keys, mask
            )
            new_carry = {"state": state, "context": context}
        else:
            context, weights = self._attend(
                carry_hidden(carry["state"][-1]), annotations, projected_keys, mask
            )
            x0 = emb_proj + self.context_proj(context)
            state = self._stack(carry["state"], x0, deterministic)
            new_carry = {"state": state}
        return new_carry, (carry_hidden(state[-1]), context, weights)

    def _readout(self, hidden, context, emb, deterministic: bool) -> Array:
        """Output layer over [s_t; c_t; E y_{t-1}]: [..., H], [..., C], [..., E] -> f32 [..., V]."""
        cfg = self.config
        features = jnp.concatenate(
            [hidden, context.astype(hidden.dtype), emb.astype(hidden.dtype)], axis=-1
        )
        features = self.dropout(features, deterministic=deterministic)
        lead = features.shape[:-1]
        # One [rows, F] matrix: with a [B, T, F] input XLA's CPU backend computes the kernel
        # gradient through a transposed copy of the [B, T, V] logit gradient (~8% of the
        # reference model's train step); flattened, it is one plain matmul.
        features = features.reshape(-1, features.shape[-1])  # [B*T, F]
        if cfg.maxout_size:
            pre = self.maxout(features)  # [..., 2M]
            features = jnp.max(pre.reshape(pre.shape[:-1] + (cfg.maxout_size, 2)), axis=-1)
        elif cfg.tie_output_embeddings:
            features = jnp.tanh(self.readout(features))  # [..., E]
        if cfg.tie_output_embeddings:
            logits = self.target_embed.attend(features) + self.output_bias
        else:
            logits = self.output(features)
        return logits.reshape(*lead, logits.shape[-1]).astype(jnp.float32)

    def _initial_carry(self, encoded: dict[str, Array]) -> dict[str, Any]:
        carry = {"state": self._initial_state(encoded)}
        if self.config.input_feeding:
            annotations = encoded["annotations"]
            carry["context"] = jnp.zeros(
                annotations.shape[:1] + annotations.shape[2:], self.config.compute_dtype
            )
        return carry

    def _teacher_forced(
        self,
        encoded,
        inputs,
        targets,
        decoder_inputs,
        *,
        inputs_segmentation,
        targets_segmentation,
        targets_position,
        deterministic,
    ):
        """`EncoderDecoder.decode`'s decoder: the scan over all T steps, then the readout."""
        del targets, targets_segmentation, targets_position  # Left-aligned rows.
        cfg = self.config
        chex.assert_shape(encoded["annotations"], (*inputs.shape, None))
        mask = model_inputs.valid_mask(inputs, inputs_segmentation, cfg.pad_id)  # [B, S]
        emb = self.dropout(self.target_embed(decoder_inputs), deterministic=deterministic)
        emb_proj = self.cells[0].project_inputs(emb)  # [B, T, G*H], all steps at once
        annotations = encoded["annotations"]
        projected_keys = self.attention.project_keys(annotations)  # once per source

        def body(module, carry, x, statics):
            return module._step(carry, x, *statics, deterministic=deterministic)

        scan = nn.scan(
            body,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=(1, nn.broadcast),
            out_axes=1,
        )
        _, (hidden, context, weights) = scan(
            self, self._initial_carry(encoded), emb_proj, (annotations, projected_keys, mask)
        )
        return self._readout(hidden, context, emb, deterministic), weights  # [B, T, V], [B, T, S]

    # ------------------------------------------------------------------ incremental decoding

    def init_decode_cache(
        self,
        encoded: dict[str, Array],
        inputs: Array,  # int [N, S]
        *,
        inputs_segmentation: Array | None = None,
        max_decode_length: int | None = None,
    ) -> dict[str, Any]:
        """The decoding cache: every leaf has leading dimension N.

        Args:
          encoded: `encode(inputs)`.
          inputs: int [N, S] source ids (for the padding mask).
          inputs_segmentation: optional int [N, S] (padding mask only).
          max_decode_length: unused (an RNN has no fixed-length cache); accepted for a common
            signature with the Transformer.

        Returns:
          {'index': int32 [N], 'state': per-layer carries [N, H], 'context': [N, C] (input
          feeding only), 'annotations': [N, S, C], 'projected_keys': [N, S, A],
          'mask': bool [N, S]}.
        """
        del max_decode_length
        model_inputs.check_ids("inputs", inputs, inputs_segmentation)
        annotations = encoded["annotations"]
        cache = self._initial_carry(encoded)
        cache.update(
            index=jnp.zeros((inputs.shape[0],), jnp.int32),
            annotations=annotations,
            projected_keys=self.attention.project_keys(annotations),
            mask=model_inputs.valid_mask(inputs, inputs_segmentation, self.config.pad_id),
        )
        return cache

    def decode_step(self, ids: Array, cache: dict[str, Any]) -> tuple[Array, Array, dict[str, Any]]:
        """One decoding step from the previous tokens `ids` int32 [N] (BOS at the first step).

        Returns:
          (logits float32 [N, V], attention float32 [N, S], new cache).
        """
        chex.assert_rank(ids, 1)
        chex.assert_shape(cache["mask"], (ids.shape[0], None))
        emb = self.target_embed(ids)  # [N, E]
        carry = {"state": cache["state"]}
        if self.config.input_feeding:
            carry["context"] = cache["context"]
        carry, (hidden, context, weights) = self._step(
            carry,
            self.cells[0].project_inputs(emb),
            cache["annotations"],
            cache["projected_keys"],
            cache["mask"],
            deterministic=True,
        )
        logits = self._readout(hidden, context, emb, deterministic=True)
        new_cache = dict(cache, index=cache["index"] + 1, **carry)
        return logits, weights.astype(jnp.float32), new_cache
