"""data/wikitext.py: the repository's WikiText-2 (xz) reads back as the text SHA256SUMS names,
and a missing, truncated or different file is an error that says so, never other text."""
import hashlib
import lzma
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "data"))
import wikitext  # noqa: E402


def test_repository_copy_is_the_checksummed_text(monkeypatch):
    monkeypatch.delenv("E8KV_DATA", raising=False)
    assert wikitext.source() == REPO / "data" / "wikitext-2-raw-test.txt.xz"
    data = wikitext.read_bytes()
    assert len(data) == 1296370 and data.startswith(b"\n\n = Robert Boulter = \n")
    assert hashlib.sha256(data).hexdigest() == wikitext.expected_sha256() == \
        "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
    assert wikitext.read() == data.decode("utf-8")


def test_other_directory_is_checked_the_same_way(tmp_path, monkeypatch):
    good = lzma.decompress((REPO / "data" / "wikitext-2-raw-test.txt.xz").read_bytes())
    (tmp_path / "wikitext-2-raw-test.txt").write_bytes(good)
    monkeypatch.setenv("E8KV_DATA", str(tmp_path))
    assert wikitext.read_bytes() == good
    assert wikitext.read_bytes(tmp_path) == good
    for bad in (good[:-1], good.replace(b"\n", b"\r\n", 1)):      # truncated, CRLF
        (tmp_path / "wikitext-2-raw-test.txt").write_bytes(bad)
        with pytest.raises(ValueError, match="expected 696cca6b.*data/SHA256SUMS"):
            wikitext.read()
    with pytest.raises(FileNotFoundError, match="data/wikitext-2-raw-test.txt.xz"):
        wikitext.read(tmp_path / "nowhere")


def test_truncated_xz_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("E8KV_DATA", raising=False)
    xz = (REPO / "data" / "wikitext-2-raw-test.txt.xz").read_bytes()
    (tmp_path / "wikitext-2-raw-test.txt.xz").write_bytes(xz[:len(xz) // 2])
    (tmp_path / "SHA256SUMS").write_bytes((REPO / "data" / "SHA256SUMS").read_bytes())
    monkeypatch.setattr(wikitext, "HERE", tmp_path)
    with pytest.raises(ValueError, match="not a complete xz file"):
        wikitext.read()
