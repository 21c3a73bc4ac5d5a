"""Fingerprint ids: e8kv.codec (Python) and e8kvd agree, by the rule of proto/e8kv_fp.h.

The rule: a fingerprint whose codec is unset means the default configuration
(e8c_config_default: K3V2, one sink token, ...) and gets the id of that configuration sent
field by field; in a set CodecConfig, counts mean what they say (an empty one has no sink
token). e8kv.codec.Config() is the default configuration; fingerprint_from_proto runs the
C conversion e8kvd runs. Each case asks e8kvd for its id (Lookup returns it) and compares it
with the id e8kv.codec computes, for: the default, each preset named explicitly, and a
configuration where every field differs from its default.
"""
import os
import subprocess
from pathlib import Path

import pytest

import e8kv
from e8kv import _fplib, codec
from e8kv import pb

GEOM = dict(model_id="parity-model", n_layers=4, n_kv_heads=2, head_dim=64)


def py_fp(config=None, rope=None):
    return codec.Fingerprint(**GEOM, src_dtype="float16",
                             rope=rope or codec.Rope(theta=10000.0),
                             config=config if config is not None else codec.Config())


def wire(codec_fields=None, rope=None):
    """A ModelFingerprint message; codec_fields None = codec unset, {} = empty CodecConfig."""
    m = pb.ModelFingerprint(**GEOM, source_dtype=pb.DTYPE_FP16,
                            rope=rope or pb.RopeConfig(theta=10000.0,
                                                       layout=pb.ROPE_LAYOUT_SPLIT_HALF))
    if codec_fields is not None:
        m.codec.SetInParent()
        for k, v in codec_fields.items():
            if isinstance(v, list):
                getattr(m.codec, k).extend(v)
            else:
                setattr(m.codec, k, v)
    return m


def daemon_id(client, m):
    lk = client.lookup(m, [1, 2, 3])
    assert len(lk.fingerprint_id) == 32
    return lk.fingerprint_id


def test_default_configuration(client):
    did = daemon_id(client, wire(None))                     # codec unset
    assert py_fp().id() == did                              # Config() = the daemon's default
    assert codec.fingerprint_from_proto(wire(None)).id() == did
    d = codec.default_config(GEOM["n_layers"])
    assert (d.preset, d.sink_tokens, d.recent_tokens) == ("K3V2", 1, 0)
    # the same configuration spelled out field by field: the same id on both sides
    spelled = wire(dict(preset=d.preset, sink_tokens=d.sink_tokens, zstd_level=d.zstd_level,
                        hadamard_seed=d.hadamard_seed, key_step=d.k_step, value_step=d.v_step,
                        decorrelation=pb.DECORRELATION_AUTO))
    assert daemon_id(client, spelled) == did
    assert codec.fingerprint_from_proto(spelled).id() == did
    assert py_fp(codec.Config(preset="K3V2", sink_tokens=1)).id() == did
    # an EMPTY CodecConfig is the default without the sink token: another id, same on both
    eid = daemon_id(client, wire({}))
    assert eid != did
    assert codec.fingerprint_from_proto(wire({})).id() == eid
    assert py_fp(codec.Config(sink_tokens=0)).id() == eid
    # Python -> wire (libe8kv's e8kv_fingerprint_to_pb) -> e8kvd: the same id
    assert daemon_id(client, py_fp().to_proto()) == did


@pytest.mark.parametrize("preset", ["K4V4", "K4V3", "K4V2", "K3V3", "K3V2", "K2V2"])
def test_explicit_preset(client, preset):
    want = py_fp(codec.Config(preset=preset)).id()          # other fields: defaults
    assert daemon_id(client, wire(dict(preset=preset, sink_tokens=1))) == want
    kb, vb = int(preset[1]), int(preset[3])
    assert daemon_id(client, wire(dict(key_bits=kb, value_bits=vb, sink_tokens=1))) == want
    assert codec.fingerprint_from_proto(wire(dict(preset=preset, sink_tokens=1))).id() == want
    assert daemon_id(client, py_fp(codec.Config(preset=preset)).to_proto()) == want


def test_every_field_off_its_default(client):
    cfg = codec.Config(preset="K4V2", k_step=0.3, v_step=1.1, protect_first=1, protect_last=1,
                       protect_layers=[2], sink_tokens=4, recent_tokens=32,
                       decorrelation="delta", zstd_level=5, hadamard_seed=12345,
                       entropy="best")
    rope = codec.Rope(theta=500000.0, type="llama3", factor=8.0, low_freq_factor=1.0,
                      high_freq_factor=4.0, original_max_pos=8192, rotary_dim=32,
                      layout="interleaved")
    f = py_fp(cfg, rope)
    want = f.id()
    assert want != py_fp().id()
    assert daemon_id(client, f.to_proto()) == want
    hand = wire(dict(preset="K4V2", key_step=0.3, value_step=1.1, protect_first_layers=1,
                     protect_last_layers=1, protected_layers=[2], sink_tokens=4,
                     recent_window_tokens=32, decorrelation=pb.DECORRELATION_DELTA,
                     zstd_level=5, hadamard_seed=12345, entropy=pb.ENTROPY_BEST),
                rope=pb.RopeConfig(theta=500000.0, scaling=pb.ROPE_SCALING_LLAMA3, factor=8.0,
                                   low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=8192, rotary_dim=32,
                                   layout=pb.ROPE_LAYOUT_INTERLEAVED))
    assert daemon_id(client, hand) == want
    back = codec.fingerprint_from_proto(hand)
    assert back.id() == want and back.config.sink_tokens == 4
    assert back.config.protect_layers == [2] and back.rope.type == "llama3"
    assert back.config.entropy == "best"


def test_refused_the_same_way(client):
    bad = wire(dict(protected_layers=[9]))                  # 9 >= n_layers
    with pytest.raises(ValueError, match="protected_layers"):
        codec.fingerprint_from_proto(bad)
    with pytest.raises(e8kv.InvalidArgument, match="protected_layers"):
        client.lookup(bad, [1])
    with pytest.raises(ValueError, match="key_bits"):
        codec.fingerprint_from_proto(wire(dict(key_bits=2.5, value_bits=2)))
    with pytest.raises(ValueError, match="source_dtype"):
        codec.fingerprint_from_proto(pb.ModelFingerprint(**GEOM, rope=pb.RopeConfig()))
    with pytest.raises(TypeError, match="ModelFingerprint"):
        codec.fingerprint_from_proto({"model_id": "x"})
    assert codec.fingerprint_from_proto(wire(None, rope=pb.RopeConfig())).rope.type == "none"


def test_pb_storage_fits_the_c_struct(tmp_path):
    """_fplib hands e8kv_fingerprint_to_pb a buffer of _PB_STORAGE bytes and reads the
    message at offset 0: check both against the C header, compiled here."""
    repo = Path(__file__).resolve().parents[2]
    build = Path(os.environ.get("E8KV_BUILD") or repo / "build")
    gen = build / "gen" / "proto"
    if not (gen / "e8kv" / "v1" / "kvstore.pb-c.h").exists():
        pytest.fail(f"{gen} holds no generated kvstore.pb-c.h: run `make` first")
    src = tmp_path / "size.c"
    src.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "proto/e8kv_fp.h"\n'
                   'int main(void) { printf("%zu %zu\\n", sizeof(e8kv_fingerprint_pb), '
                   'offsetof(e8kv_fingerprint_pb, m)); return 0; }\n')
    pc = subprocess.run(["pkg-config", "--cflags", "libprotobuf-c"], capture_output=True,
                        text=True, check=True).stdout.split()
    exe = tmp_path / "size"
    subprocess.run(["cc", "-std=c11", f"-I{repo}", f"-I{gen}", *pc, str(src), "-o", str(exe)],
                   check=True)
    size, off = map(int, subprocess.run([str(exe)], capture_output=True, text=True,
                                        check=True).stdout.split())
    assert off == 0 and size * 4 <= _fplib._PB_STORAGE, (size, off)
