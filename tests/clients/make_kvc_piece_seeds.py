#!/usr/bin/env python3
"""Writes the seeds of fuzz_kvc_piece (tests/clients/corpus_kvc_piece): GetChunksResponse
messages serialized by the Python protobuf runtime (an independent writer) plus hand-made wire
bytes, each prefixed with the segmentation byte of the target. valid-*: must parse; bad-*: must
be refused. Usage: make_kvc_piece_seeds.py DIR (needs the e8kv package's generated stubs)."""
import sys
from pathlib import Path

import e8kv


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def key(field, wt):
    return varint(field << 3 | wt)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    full = e8kv.pb.GetChunksResponse(
        chunk_index=3, chunk_key=bytes(range(32)), start_token=768, n_tokens=256, layer_begin=0,
        layer_end=32, encoding=e8kv.pb.ENCODING_E8_FRAME, chunk_bytes=5_000_000, offset=4096,
        data=bytes(i * 7 % 251 for i in range(300)), last_piece=True,
        fingerprint_id=bytes(range(100, 132)), token_ids=[1, 300, 70000, 2**32 - 1])
    fb = full.SerializeToString()
    seeds = {
        "valid-full": fb,
        "valid-empty": b"",
        "valid-unknown-fields": fb + key(99, 0) + varint(12345) + key(98, 2) + varint(3) + b"abc"
        + key(97, 5) + b"\x01\x02\x03\x04" + key(96, 1) + bytes(8),
        "valid-unpacked-ids": key(14, 0) + varint(5) + key(14, 0) + varint(6) + key(1, 0)
        + varint(2),
        "valid-field-twice": key(1, 0) + varint(1) + key(11, 2) + varint(2) + b"xy" + key(1, 0)
        + varint(9) + key(11, 2) + varint(1) + b"z",
        "valid-wide-uint32": key(1, 0) + varint(2**40 + 5),
        "bad-truncated": fb[:-1],
        "bad-long-key": key(2, 2) + varint(65) + bytes(65),
        "bad-bool-as-fixed64": key(12, 1) + bytes(8),
        "bad-group": key(5, 3) + key(5, 4),
        "bad-wrong-wiretype": key(1, 2) + varint(1) + b"a",
        "bad-length-overrun": key(11, 2) + varint(1000) + b"short",
        "bad-zero-tag": b"\x00\x01",
        "bad-long-varint": key(3, 0) + b"\xff" * 10 + b"\x01",
    }
    for name, msg in seeds.items():
        (out / name).write_bytes(b"\x00" + msg)       # byte 0 = 0: one segment
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
