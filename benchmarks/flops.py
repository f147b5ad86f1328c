"""Analytic model FLOPs of one train step (matmuls only, forward x 3 for forward + backward).

XLA's own count (`compiled.cost_analysis()["flops"]`) is reported next to these, but it counts
the body of a `while` loop (every `lax.scan`) once, not once per iteration, so it undercounts
recurrent models: for the RNNsearch reference it misses the 31 other steps of the decoder and
encoder recurrences (~26 of ~166 GFLOP).

Shape glossary: B batch, S source length, T target length, E embedding width, V vocabulary.
"""

from __future__ import annotations

from seq2seq_jax.models import ModelConfig

_GATES = {"gru": 3, "lstm": 4}


def _dense(rows: int, fan_in: int, fan_out: int) -> float:
    """FLOPs of `[rows, fan_in] @ [fan_in, fan_out]` (multiply + add)."""
    return 2.0 * rows * fan_in * fan_out


def rnnsearch_forward_flops(
    cfg: ModelConfig, batch: int, source_length: int, target_length: int
) -> float:
    """Forward matmul FLOPs of RNNsearch (teacher forcing) on a [B, S] -> [B, T] batch."""
    b, s, t = batch, source_length, target_length
    gates = _GATES[cfg.cell_type]
    units, dirs = cfg.encoder_hidden_size, 2 if cfg.bidirectional else 1
    ann, hidden = cfg.annotation_size, cfg.decoder_hidden_size
    att = cfg.attention_dim or hidden
    flops = 0.0
    for layer in range(cfg.encoder_layers):  # input projection + recurrence, per direction
        width = cfg.emb_dim if layer == 0 else ann
        flops += dirs * (_dense(b * s, width, gates * units) + _dense(b * s, units, gates * units))
    flops += _dense(b * s, ann, att)  # attention keys, once per source
    if cfg.bridge != "zero":
        bridge_in = ann if cfg.bridge == "mean" else dirs * units
        flops += cfg.decoder_layers * _dense(b, bridge_in, hidden)
    flops += _dense(b * t, cfg.emb_dim + ann, gates * hidden)  # first decoder input projection
    flops += (cfg.decoder_layers - 1) * _dense(b * t, hidden, gates * hidden)
    flops += cfg.decoder_layers * _dense(b * t, hidden, gates * hidden)  # recurrences
    flops += _dense(b * t, hidden, att) + _dense(b * t * s, att, 1)  # query, v . tanh
    flops += _dense(b * t * s, 1, ann)  # weighted sum of annotations
    features = hidden + ann + cfg.emb_dim
    if cfg.maxout_size:
        flops += _dense(b * t, features, 2 * cfg.maxout_size)
        features = cfg.maxout_size
    elif cfg.tie_output_embeddings:
        flops += _dense(b * t, features, cfg.emb_dim)
        features = cfg.emb_dim
    return flops + _dense(b * t, features, cfg.target_vocab_size)


def transformer_forward_flops(
    cfg: ModelConfig, batch: int, source_length: int, target_length: int
) -> float:
    """Forward matmul FLOPs of the Transformer (additive or dot cross-attention)."""
    b, s, t, d, f = batch, source_length, target_length, cfg.emb_dim, cfg.mlp_dim
    att = cfg.attention_dim or d

    def self_attention(rows: int, length: int) -> float:
        return 4 * _dense(rows, d, d) + 2 * _dense(rows * length, d, 1)

    mlp = lambda rows: _dense(rows, d, f) + _dense(rows, f, d)
    flops = cfg.encoder_layers * (self_attention(b * s, s) + mlp(b * s))
    cross = _dense(b * t, d, att) + _dense(b * s, d, att) + _dense(b * t, d, d)  # q, k, out
    if cfg.attention_type == "additive":
        cross += _dense(b * t * s, att, 1) + _dense(b * t * s, 1, d)  # v . tanh, context
    else:
        cross += 2 * _dense(b * t * s, d, 1)
    flops += cfg.decoder_layers * (self_attention(b * t, t) + cross + mlp(b * t))
    return flops + _dense(b * t, d, cfg.target_vocab_size)


def train_flops(cfg: ModelConfig, batch: int, source_length: int, target_length: int) -> float:
    """Model FLOPs of one train step: 3 x forward (the backward pass costs two forwards)."""
    if cfg.name == "rnnsearch":
        forward = rnnsearch_forward_flops(cfg, batch, source_length, target_length)
    elif cfg.name == "transformer":
        forward = transformer_forward_flops(cfg, batch, source_length, target_length)
    else:
        raise ValueError(f"no FLOP count for model {cfg.name!r}; known: rnnsearch, transformer")
    return 3.0 * forward
