#!/usr/bin/env python3
"""Writes the seed corpus of the export-file reader (corpus_ctl_xfile/) from the
format as clients/cli/EXPORT.md states it, independently of the C writer:
files named valid-* must read cleanly to END, the others must be refused.
Run once by hand when the format changes; the files are committed."""
import hashlib
import os
import struct

def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

assert crc32c(b"123456789") == 0xE3069283

def record(rtype, payload):
    head = struct.pack("<IIQ", rtype, 0, len(payload))
    return head + payload + struct.pack("<I", crc32c(head + payload))

def export_file(payloads):
    h = b"E8KVXPRT" + struct.pack("<HH", 1, 0)
    out = h + struct.pack("<I", crc32c(h))
    for t, p in payloads:
        out += record(t, p)
    end = struct.pack("<QQ", len(payloads), sum(len(p) for _, p in payloads))
    end += hashlib.sha256(out).digest()
    return out + record(0x7FFFFFFF, end)

def read_records(data):
    """(type, payload) of every record before END, from a well-formed file."""
    out, at = [], 16
    while True:
        rtype, _, n = struct.unpack_from("<IIQ", data, at)
        if rtype == 0x7FFFFFFF:
            return out
        out.append((rtype, data[at + 16:at + 16 + n]))
        at += 16 + n + 4


def main():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_ctl_xfile")
    os.makedirs(here, exist_ok=True)
    valid = export_file([(1, b"meta"), (2, bytes(range(256)) * 3), (2, b"")])
    seeds = {
        "valid-three-records": valid,
        "valid-empty": export_file([]),
        "bad-truncated": valid[: len(valid) - 7],
        "bad-flipped": valid[:40] + bytes([valid[40] ^ 1]) + valid[41:],
        "bad-junk-after-end": valid + b"x",
        "bad-huge-length": valid[:16] + struct.pack("<IIQ", 2, 0, 1 << 40) + valid[32:],
        "bad-magic": b"E8KVXPRU" + valid[8:],
    }
    for name, data in seeds.items():
        with open(os.path.join(here, name), "wb") as f:
            f.write(data)
    print("wrote", len(seeds), "seeds to", here)


if __name__ == "__main__":
    main()
