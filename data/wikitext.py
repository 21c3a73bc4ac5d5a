"""data/wikitext.py: WikiText-2 for the demo, the tests and the benchmarks, checked.

The text is data/wikitext-2-raw-test.txt.xz of this repository (README.md beside it: source,
licence CC BY-SA 3.0, changes), decompressed in memory (xz: 369 KB instead of 1.3 MB in every
clone and in every working-tree copy sent to the GPU machine), or the plain
wikitext-2-raw-test.txt in the directory $E8KV_DATA names, when that is set. Either way the
text's SHA-256 must be the one in data/SHA256SUMS: a truncated or different file (a bad clone,
an edited copy, CRLF line endings) is an error naming both digests, never a silently
different text and different numbers.

Python: put this directory on sys.path and ``import wikitext``; ``wikitext.read()`` (or
``read(data_dir)`` for a directory holding the plain text).
Shell: ``python3 data/wikitext.py > FILE`` writes the checked text (exit 1 and why on stderr).
Standard library only.
"""
import hashlib
import lzma
import os
import sys
from pathlib import Path

NAME = "wikitext-2-raw-test.txt"
HERE = Path(__file__).resolve().parent


def expected_sha256():
    """The digest of NAME listed in SHA256SUMS (``sha256sum -c`` format) beside this file."""
    for line in (HERE / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name.strip().lstrip("*") == NAME:
            return digest.strip()
    raise RuntimeError(f"{HERE / 'SHA256SUMS'} lists no {NAME}")


def source(data_dir=None):
    """Where read() takes the text from: data_dir/NAME (a directory holding the plain text),
    else $E8KV_DATA/NAME when E8KV_DATA is set, else the repository's data/NAME.xz."""
    d = data_dir or os.environ.get("E8KV_DATA")
    return Path(d) / NAME if d else HERE / (NAME + ".xz")


def read_bytes(data_dir=None):
    """The checked text's bytes (UTF-8), from source(data_dir). FileNotFoundError when its
    file is missing, ValueError when it does not decompress or its digest is not
    SHA256SUMS's."""
    p = source(data_dir)
    if not p.is_file():
        where = "the directory given" if data_dir else "$E8KV_DATA" \
            if p.suffix != ".xz" else "this checkout's data/ directory"
        raise FileNotFoundError(f"{p} not found ({where}; the repository carries the text as "
                                f"data/{NAME}.xz, used when no directory is given and "
                                "E8KV_DATA is unset)")
    data = p.read_bytes()
    if p.suffix == ".xz":
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as e:
            raise ValueError(f"{p}: not a complete xz file ({e})") from e
    got, want = hashlib.sha256(data).hexdigest(), expected_sha256()
    if got != want:
        raise ValueError(f"{p}: the text's SHA-256 is {got}, expected {want} (data/SHA256SUMS): "
                         "not the WikiText-2 raw test split this project measures on "
                         "(truncated, edited or converted, e.g. to CRLF line endings)")
    return data


def read(data_dir=None):
    """The checked text, as str (see read_bytes)."""
    return read_bytes(data_dir).decode("utf-8")


if __name__ == "__main__":
    try:
        sys.stdout.buffer.write(read_bytes())
    except (OSError, ValueError) as e:
        sys.exit(f"wikitext: {e}")
