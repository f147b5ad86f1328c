"""Reading the user's parallel text: two line-aligned files or one TSV, plain or gzip.

Every failure names its culprit: the missing file, the file and line that is not UTF-8, both
files and both line counts when they differ, the empty file.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator

_GZIP_MAGIC = b"\x1f\x8b"


def _open_binary(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Parallel text file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def read_lines(path: str) -> Iterator[str]:
    """Yields the lines of a UTF-8 text file (gzip-compressed or not), without line ends.

    Args:
      path: The file.

    Yields:
      Each line with its trailing "\\n" / "\\r\\n" removed.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: a line is not valid UTF-8 (the message names the file and line number).
    """
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid UTF-8 ({e})") from e
            yield line.rstrip("\r\n")


def read_parallel_files(source_path: str, target_path: str) -> list[tuple[str, str]]:
    """Reads two line-aligned files into (source, target) pairs.

    Args:
      source_path: One source sentence a line.
      target_path: One target sentence a line, aligned with `source_path`.

    Returns:
      The pairs in file order.

    Raises:
      FileNotFoundError: a file does not exist.
      ValueError: a file is empty, a line is not UTF-8, or the line counts differ (the
          message names both files and both counts).
    """
    sources = list(read_lines(source_path))
    targets = list(read_lines(target_path))
    if len(sources) != len(targets):
        raise ValueError(
            f"Source and target files have different line counts: {source_path} has "
            f"{len(sources)} lines, {target_path} has {len(targets)} lines"
        )
    if not sources:
        raise ValueError(f"Parallel text files are empty: {source_path} and {target_path}")
    return list(zip(sources, targets, strict=True))


def read_tsv(path: str) -> list[tuple[str, str]]:
    """Reads a `source<TAB>target` file into pairs.

    Args:
      path: The TSV file (plain or gzip).

    Returns:
      The pairs in file order.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is empty, or a line is not UTF-8 or has not exactly two fields.
    """
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(
                f"{path}, line {number}: expected 2 tab-separated fields (source, target), "
                f"found {len(fields)}"
            )
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ValueError(f"TSV file is empty: {path}")
    return pairs
