"""Train a model: `python -m seq2seq_jax.train --config=configs/default.py[:variant] --workdir=DIR`.

Override any config value with `--config.key=value` (e.g. `--config.num_train_steps=100`); unknown
keys are rejected. Runs resume from the workdir's latest checkpoint.
"""

if __name__ == "__main__":  # Before JAX loads (seq2seq_jax.hugepages).
    from seq2seq_jax.hugepages import reexec_with_hugepages

    reexec_with_hugepages("seq2seq_jax.train")

import logging as pylogging
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from seq2seq_jax.training import experiment, loop, parallel
from seq2seq_jax.workdir import CheckpointError

_REPO_DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.py"
_DEFAULT = "configs/default.py" if Path("configs/default.py").is_file() else str(_REPO_DEFAULT)

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", default=_DEFAULT, help_string="Experiment config file[:variant].", lock_config=True
)


def _fail(what: str, error: Exception) -> int:
    lines = [x for x in str(error).splitlines() if x.strip()]
    text = lines[-1] if "Traceback" in str(error) else " ".join(" ".join(lines).split())
    print(f"seq2seq_jax.train: error: {what}{text}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    """Runs `seq2seq_jax.training.loop.train_and_evaluate`; one-line errors, exit code 1."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if logging.get_verbosity() <= logging.INFO:  # Keep INFO for our logs; quiet the libraries'.
        for name in ("absl", "jax", "orbax"):
            pylogging.getLogger(name).setLevel(pylogging.WARNING)
    try:
        config = _CONFIG.value  # A config file that failed to load raises here.
        if parallel.maybe_initialize_distributed(config.distributed) and jax.process_index():
            pylogging.getLogger("seq2seq_jax").setLevel(pylogging.WARNING)  # Process 0 reports.
    except (OSError, ValueError) as e:
        return _fail("", e)
    try:
        result = loop.train_and_evaluate(config, _WORKDIR.value)
    except (loop.SetupError, loop.TrainingDiverged) as e:
        return _fail("", e)
    except (OSError, CheckpointError) as e:  # A disk that filled up or failed: the cause.
        return _fail("while training: ", e)
    logging.info("done: %s", {k: v for k, v in result.items() if not k.startswith("train_")})
    return 0


def _config_arg(argv: list[str], default: str) -> str:
    """The value given to --config (either '--config=X' or '--config X')."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return default


def config_package_on_path(config_arg: str) -> None:
    """Lets the config file of `--config=FILE[:ARG]` import its package (`from configs import
    common`) from any working directory: when FILE's folder is a package (has `__init__.py`),
    the folder above it goes first on `sys.path` (ml_collections loads FILE by path)."""
    folder = Path(config_arg.split(":", 1)[0]).expanduser().resolve().parent
    root = str(folder.parent)
    if (folder / "__init__.py").is_file() and sys.path[:1] != [root]:
        sys.path.insert(0, root)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (a config file that fails, unknown config keys,
    bad values)."""
    config_package_on_path(_config_arg(argv, _DEFAULT))
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - any error in the user's config file is reported.
        where = experiment.config_file_error(_config_arg(argv, _DEFAULT), e)
        if where is not None:
            sys.exit(_fail("", RuntimeError(where)))
        if not isinstance(
            e, flags.Error | AttributeError | KeyError | TypeError | ValueError | OSError
        ):
            raise
        key = str(e).strip("\"'")
        culprits = [a for a in argv[1:] if a.startswith("--config") and key and key in a]
        what = "unknown config key" if isinstance(e, AttributeError) else "bad flag or config"
        where = f" in {' '.join(culprits)}" if culprits else ""
        sys.exit(_fail(f"{what}{where}: ", e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
