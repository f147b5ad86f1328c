"""Search options: every default of how to decode is declared here, once.

`SearchConfig`'s field defaults are the defaults of the library's searches
(`beam_search(alpha=...)`, `max_length_from_source(a=..., b=...)`), of the experiment config's
`eval` section, of the decode CLI's flags (`seq2seq_jax.inference.run.DecodeOptions`) and of the
training loop's task metric; they all read them from this class. Imports nothing from the
package, so every level can use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How to search (hashable; every field but `alpha` and `seed` is compiled in).

    Attributes:
      beam_size: K; 1 = greedy search.
      alpha: GNMT length-penalty strength of beam search.
      max_length: L, the absolute maximum output length (EOS included) and buffer size.
      length_ratio: `a` of the per-sentence limit `ceil(a * source_length + b)`.
      length_offset: `b` of that limit.
      sample: ancestral sampling instead of search (needs `beam_size == 1`).
      temperature: sampling temperature (0 = greedy).
      top_k: sample among the k most probable tokens (0 = all).
      top_p: nucleus sampling mass (1 = all).
      seed: sampling seed; sentence i uses `fold_in(PRNGKey(seed), i)`.
      nbest: hypotheses returned per input, best first (1 <= nbest <= beam_size).
    """

    beam_size: int = 1
    alpha: float = 0.6
    max_length: int = 64
    length_ratio: float = 1.5
    length_offset: float = 10.0
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    nbest: int = 1

    def validate(self) -> SearchConfig:
        """Returns `self`; raises ValueError naming the bad option."""
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.sample and self.beam_size > 1:
            raise ValueError(
                f"sampling decodes one hypothesis: use beam_size=1 with sample, "
                f"got beam_size={self.beam_size}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(
                f"nbest must be between 1 and beam_size={self.beam_size}, got {self.nbest}"
            )
        return self

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> SearchConfig:
        """The search of an experiment config's `eval` section (the training loop's task
        metric, and the decode CLI's defaults), with `overrides` (fields given) on top.

        `max_length` is `eval.max_decode_length`, else `data.max_target_length`.
        """
        eval_cfg = config.get("eval", {})
        fields = {
            "beam_size": int(eval_cfg.get("beam_size", cls.beam_size)),
            "alpha": float(eval_cfg.get("alpha", cls.alpha)),
            "max_length": int(
                eval_cfg.get("max_decode_length", 0) or config.data.max_target_length
            ),
        }
        return cls(**{**fields, **overrides})

    @property
    def mode(self) -> str:
        """'sample', 'greedy' or 'beam<K>'."""
        if self.sample:
            return "sample"
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"
