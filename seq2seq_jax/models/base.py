"""What every encoder-decoder family shares: capabilities, `__call__` and `decode`'s contract.

A family (`RNNSearch`, `Transformer`) subclasses `EncoderDecoder` and declares what it can do
as class attributes, which the config checks read by name (`registry.check_batching`) instead of
testing model names:

- `supports_packing`: packed rows (several examples per row, `*_segmentation` 1..n) keep the
  examples apart. A recurrence carries its state across a row, so RNNsearch cannot.

It implements `encode`, `_teacher_forced` (below), `init_decode_cache` and `decode_step`;
`__call__` (teacher forcing) and `decode` (input checks, the decoder inputs
`shift_right(targets)`, the optional attention) are written once here.

Shape glossary: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

from typing import Any, ClassVar

import chex
import flax.linen as nn

from seq2seq_jax.models import inputs as model_inputs
from seq2seq_jax.models.config import ModelConfig
from seq2seq_jax.models.shift import shift_right

Array = chex.Array


class EncoderDecoder(nn.Module):
    """Base of the model families (see the module docstring).

    Attributes:
      config: the model's `ModelConfig`.
    """

    config: ModelConfig

    supports_packing: ClassVar[bool] = False

    @classmethod
    def max_length(cls, config: ModelConfig) -> int | None:
        """The longest sequence this family can embed or cache (None: unbounded)."""
        del config
        return None

    def _deterministic(self, train: bool) -> bool:
        """Whether dropout is off for a call with `train`."""
        return (not train) or self.config.deterministic

    def encode(
        self,
        inputs: Array,
        *,
        inputs_segmentation: Array | None = None,
        inputs_position: Array | None = None,
        train: bool = False,
    ) -> Any:
        """Encodes the source int [B, S]; the result's layout is the family's."""
        raise NotImplementedError

    def _teacher_forced(
        self,
        encoded: Any,
        inputs: Array,  # int [B, S]
        targets: Array,  # int [B, T]
        decoder_inputs: Array,  # int [B, T]: shift_right(targets)
        *,
        inputs_segmentation: Array | None,
        targets_segmentation: Array | None,
        targets_position: Array | None,
        deterministic: bool,
    ) -> tuple[Array, Array]:
        """The family's decoder over all steps: (logits float32 [B, T, V], cross-attention
        averaged over heads float32 [B, T, S]). Inputs are checked by `decode` first."""
        raise NotImplementedError

    def decode(
        self,
        encoded: Any,
        inputs: Array,  # int [B, S]
        targets: Array,  # int [B, T]
        *,
        inputs_segmentation: Array | None = None,
        targets_segmentation: Array | None = None,
        inputs_position: Array | None = None,
        targets_position: Array | None = None,
        train: bool = False,
        return_attention: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Teacher-forced decoding of `targets` (shifted right inside, segment-aware).

        Returns:
          logits float32 [B, T, V]; with `return_attention`, also the cross-attention averaged
          over heads (the Transformer: of its last layer), float32 [B, T, S].
        """
        cfg = self.config
        model_inputs.check_ids("inputs", inputs, inputs_segmentation, inputs_position)
        model_inputs.check_ids("targets", targets, targets_segmentation, targets_position)
        model_inputs.check_same_batch(inputs, targets)
        decoder_inputs = shift_right(
            targets, bos_id=cfg.bos_id, pad_id=cfg.pad_id, segmentation=targets_segmentation
        )
        logits, attention = self._teacher_forced(
            encoded,
            inputs,
            targets,
            decoder_inputs,
            inputs_segmentation=inputs_segmentation,
            targets_segmentation=targets_segmentation,
            targets_position=targets_position,
            deterministic=self._deterministic(train),
        )
        return (logits, attention) if return_attention else logits

    def __call__(
        self,
        inputs: Array,  # int [B, S]
        targets: Array,  # int [B, T]
        *,
        inputs_segmentation: Array | None = None,
        targets_segmentation: Array | None = None,
        inputs_position: Array | None = None,
        targets_position: Array | None = None,
        train: bool = False,
    ) -> Array:
        """Teacher-forced logits float32 [B, T, V]."""
        encoded = self.encode(
            inputs,
            inputs_segmentation=inputs_segmentation,
            inputs_position=inputs_position,
            train=train,
        )
        return self.decode(
            encoded,
            inputs,
            targets,
            inputs_segmentation=inputs_segmentation,
            targets_segmentation=targets_segmentation,
            inputs_position=inputs_position,
            targets_position=targets_position,
            train=train,
        )
