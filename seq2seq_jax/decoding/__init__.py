"""Model-agnostic decoding: greedy search, beam search and sampling over `tokens_to_logits`.

The step contract (docs/ARCHITECTURE.md, "Decoding"): `tokens_to_logits(ids: int32[N], cache) ->
(logits: float32[N, V], attention: float32[N, S], new_cache)`, every cache leaf with leading
dimension N. Nothing here imports the models.
"""

from seq2seq_jax.decoding.beam import beam_search
from seq2seq_jax.decoding.filtering import filter_logits, top_k_filter, top_p_filter
from seq2seq_jax.decoding.lengths import gnmt_length_penalty, max_length_from_source
from seq2seq_jax.decoding.options import SearchConfig
from seq2seq_jax.decoding.result import Beams, DecodeResult
from seq2seq_jax.decoding.search import greedy_search, per_example_keys, sample
from seq2seq_jax.decoding.step import PAD_ID, TokensToLogits, probe_step, step_log_probs

__all__ = [
    "PAD_ID",
    "SearchConfig",
    "Beams",
    "DecodeResult",
    "TokensToLogits",
    "beam_search",
    "filter_logits",
    "gnmt_length_penalty",
    "greedy_search",
    "max_length_from_source",
    "per_example_keys",
    "probe_step",
    "sample",
    "step_log_probs",
    "top_k_filter",
    "top_p_filter",
]
