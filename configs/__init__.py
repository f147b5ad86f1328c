"""Experiment configs for `python -m seq2seq_jax.train --config=configs/<file>.py[:arg]`.

Each file defines `get_config(arg=None) -> ml_collections.ConfigDict`; the pieces they share
live in `configs/common.py` (`from configs import common`). The training CLI puts the folder
holding `configs/` first on `sys.path` before it loads a file of this package, so
`--config=/path/to/repo/configs/x.py` works from any working directory; other code imports the
configs as a package (`import configs.default`) with the repository root on `sys.path`.
"""
