"""The e8kv codec in the harness, through e8kv.codec (ctypes to libe8codec.so).

It is measured the way the store keeps it: the prefix cut into chunks of CHUNK_TOKENS tokens
(DESIGN.md's default 256), each chunk encoded with e8c_chunk_encode (all layers, K and V: chunk
header, embedded fingerprint, index, one frame per layer and kind, CRCs), decoded from those
bytes only with e8c_chunk_decode. bpe counts every byte of every chunk. The source dtype is
float32, the dtype this harness runs the model in.
"""
import os
import sys

import numpy as np

from .baselines import Codec

CHUNK_TOKENS = 256
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _import_codec():
    """e8kv.codec as the path finds it (device-run.sh puts a codec-only e8kv package first:
    the full package's __init__ needs generated gRPC stubs); else the checkout's."""
    try:
        from e8kv import codec
        return codec
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.normpath(os.path.join(here, "..", "..", "clients", "python"))
    if pkg not in sys.path:
        sys.path.insert(0, pkg)
    from e8kv import codec
    return codec


class E8(Codec):
    codec = "e8"

    def __init__(self, rope: dict, n_layers: int, n_kv_heads: int, head_dim: int,
                 preset: str, label: str = None, **config):
        C = _import_codec()
        if rope.get("scaling"):
            raise NotImplementedError("only unscaled RoPE is wired here")
        fp = C.Fingerprint(model_id=MODEL_ID, n_layers=n_layers, n_kv_heads=n_kv_heads,
                           head_dim=head_dim, src_dtype="float32",
                           rope=C.Rope(theta=rope["theta"], type="default",
                                       layout=rope["style"], rotary_dim=rope["rotary_dim"]),
                           config=C.Config(preset=preset, **config))
        self.c = C.Codec(fp)
        self.config = label or preset

    def encode_raw(self, raw: np.ndarray, pos0: int):
        """raw [L, 2, H, T, D] float32 -> chunk byte strings of CHUNK_TOKENS tokens each."""
        t = raw.shape[3]
        return [self.c.encode_chunk(raw[:, :, :, s:s + CHUNK_TOKENS], first_pos=pos0 + s,
                                    seq_len=pos0 + t)
                for s in range(0, t, CHUNK_TOKENS)]

    def decode_raw(self, blobs, shape) -> np.ndarray:
        """Chunks -> [L, 2, H, T, D] float32, decoded from the bytes only."""
        out = np.empty(shape, np.float32)
        s = 0
        for b in blobs:
            part = self.c.decode_chunk(bytes(b), dtype="float32")
            out[:, :, :, s:s + part.shape[3]] = part
            s += part.shape[3]
        if s != shape[3]:
            raise ValueError(f"chunks hold {s} tokens, expected {shape[3]}")
        return out

    def encode_cache(self, kv, pos0: int):
        return self.encode_raw(np.stack([np.stack([k, v]) for k, v in kv]), pos0)

    def decode_cache(self, blobs):
        parts = [self.c.decode_chunk(b, dtype="float32") for b in blobs]
        raw = np.concatenate(parts, axis=3)
        return [(np.ascontiguousarray(raw[i, 0]), np.ascontiguousarray(raw[i, 1]))
                for i in range(raw.shape[0])]


def codecs(rope: dict, n_layers: int = 30, n_kv_heads: int = 3, head_dim: int = 64):
    C = _import_codec()
    return [E8(rope, n_layers, n_kv_heads, head_dim, p) for p in C.presets()]
