/*
 * test_e8c_basic.c: the codec's small parts: error space, CRC32C, dtype
 * conversions, fingerprint validation / serialization / id, presets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "codec/e8c_internal.h"
#include "tests/codec/e8c_testgen.h"

static void test_crc_check_value(void **state)
{
    (void)state;
    assert_int_equal(e8c_crc32c("123456789", 9), 0xE3069283u);
    assert_int_equal(e8c_crc32c("", 0), 0);
}

static void test_error_space(void **state)
{
    (void)state;
    for (int64_t c = -1; c >= E8C_ERR_PRESET; c--) {
        assert_true(e8c_is_error(c));
        assert_string_not_equal(e8c_error_name(c), "E8C_ERR_UNKNOWN");
        assert_true(strncmp(e8c_error_name(c), "E8C_ERR_", 8) == 0);
        assert_true(strlen(e8c_error_string(c)) > 5);
    }
    assert_false(e8c_is_error(0));
    assert_false(e8c_is_error(1234));
    assert_string_equal(e8c_error_name(-999), "E8C_ERR_UNKNOWN");
    assert_string_equal(e8c_error_name(E8C_ERR_CHECKSUM), "E8C_ERR_CHECKSUM");
}

static void test_f16_conversions(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = e8c_f16_to_f32((uint16_t)h);
        if (!isfinite(f)) continue;
        uint16_t back;
        assert_int_equal(e8c_f32_to_f16_checked(f, &back), 0);
        assert_int_equal(back, h);
        assert_int_equal(e8c_f32_to_f16_sat(f), h);
    }
    assert_int_equal(e8c_f32_to_f16_sat(1e6f), 0x7bff);
    assert_int_equal(e8c_f32_to_f16_sat(-1e6f), 0xfbff);
    assert_int_equal(e8c_f32_to_f16_sat(65519.0f), 0x7bff); /* rounds to 65504 */
    uint16_t o;
    assert_int_equal(e8c_f32_to_f16_checked(65520.0f, &o), -1);
    assert_int_equal(e8c_f32_to_f16_sat(1.0f), 0x3c00);
    assert_int_equal(e8c_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(e8c_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
    assert_int_equal(e8c_f32_to_bf16(1.01171875f), 0x3f82); /* tie to even, up */
    assert_true(e8c_f16_to_f32(0x0001) == 0x1p-24f);
}

static const uint32_t rope_types[] = {E8C_ROPE_NONE, E8C_ROPE_DEFAULT, E8C_ROPE_LINEAR,
                                      E8C_ROPE_DYNAMIC, E8C_ROPE_YARN, E8C_ROPE_LLAMA3,
                                      E8C_ROPE_LONGROPE};

static void test_fingerprint_valid_all_rope(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    char msg[256];
    for (size_t i = 0; i < sizeof rope_types / sizeof rope_types[0]; i++)
        for (int il = 0; il < 2; il++) {
            e8t_fingerprint(&fp, 4, 2, 64, rope_types[i], il);
            assert_int_equal(e8c_fingerprint_validate(&fp, msg, sizeof msg), 0);
        }
}

#define EXPECT_INVALID(code, mutate)                                   \
    do {                                                               \
        e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_YARN, 0);              \
        mutate;                                                        \
        assert_int_equal(e8c_fingerprint_validate(&fp, msg, sizeof msg), code); \
        assert_true(strlen(msg) > 5);                                  \
    } while (0)

static void test_fingerprint_refusals(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    char msg[256];
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.type = E8C_ROPE_UNSET);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.type = 99);
    EXPECT_INVALID(E8C_ERR_HEAD_DIM, fp.head_dim = 60);
    EXPECT_INVALID(E8C_ERR_HEAD_DIM, fp.head_dim = 520);
    EXPECT_INVALID(E8C_ERR_HEAD_DIM, fp.head_dim = 0);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.beta_fast = 0);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.attention_factor = 0);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.original_max_pos = 0);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.theta = NAN);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.rotary_dim = 63);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.rotary_dim = 66);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.layout = 0);
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.low_freq_factor = 1); /* unused by yarn */
    EXPECT_INVALID(E8C_ERR_ROPE, fp.rope.short_factor[3] = 1); /* unused by yarn */
    EXPECT_INVALID(E8C_ERR_CONFIG, fp.config.k_step = 0);
    EXPECT_INVALID(E8C_ERR_CONFIG, fp.config.v_step = 100);
    EXPECT_INVALID(E8C_ERR_CONFIG, fp.config.zstd_level = 0);
    EXPECT_INVALID(E8C_ERR_CONFIG, fp.config.decorrelation = 9);
    EXPECT_INVALID(E8C_ERR_CONFIG, fp.config.entropy = 3);
    EXPECT_INVALID(E8C_ERR_CONFIG, fp.config.protect_mask[0] = 1u << 5); /* layer 5 of 4 */
    EXPECT_INVALID(E8C_ERR_DTYPE, fp.src_dtype = 7);
    EXPECT_INVALID(E8C_ERR_LIMIT, fp.n_kv_heads = 0);
    EXPECT_INVALID(E8C_ERR_ARG, fp.model_id[0] = 0);
    EXPECT_INVALID(E8C_ERR_ARG, memset(fp.model_id, 'a', sizeof fp.model_id));
    /* llama3 needs high > low; longrope needs all its factors */
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_LLAMA3, 0);
    fp.rope.high_freq_factor = fp.rope.low_freq_factor;
    assert_int_equal(e8c_fingerprint_validate(&fp, msg, sizeof msg), E8C_ERR_ROPE);
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_LONGROPE, 0);
    fp.rope.long_factor[31] = 0;
    assert_int_equal(e8c_fingerprint_validate(&fp, msg, sizeof msg), E8C_ERR_ROPE);
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_LONGROPE, 0);
    fp.rope.n_longrope = 16;
    assert_int_equal(e8c_fingerprint_validate(&fp, msg, sizeof msg), E8C_ERR_ROPE);
    int64_t err = 0;
    assert_null(e8c_ctx_create(&fp, &err));
    assert_int_equal(err, E8C_ERR_ROPE);
}

static void test_fingerprint_serialize_roundtrip(void **state)
{
    (void)state;
    e8c_fingerprint fp, back;
    uint8_t buf[8192], id1[32], id2[32];
    for (size_t i = 0; i < 3 * sizeof rope_types / sizeof rope_types[0]; i++) {
        e8t_fingerprint(&fp, 30, 3, 64, rope_types[i % 7], (int)(i & 1));
        fp.config.protect_mask[0] = 0x5;
        fp.config.entropy = (uint32_t)(i / 7); /* rans32, best, v1 */
        int64_t n = e8c_fingerprint_serialize(&fp, NULL, 0);
        assert_true(n > 0);
        assert_int_equal(e8c_fingerprint_serialize(&fp, buf, (size_t)n - 1), E8C_ERR_DST_SIZE);
        assert_int_equal(e8c_fingerprint_serialize(&fp, buf, sizeof buf), n);
        assert_int_equal(e8c_fingerprint_parse(buf, (size_t)n, &back), 0);
        assert_memory_equal(&fp, &back, sizeof fp);
        assert_int_equal(e8c_fingerprint_id(&fp, id1), 0);
        assert_int_equal(e8c_fingerprint_id(&back, id2), 0);
        assert_memory_equal(id1, id2, 32);
        for (int64_t k = 0; k < n; k++) /* every truncation is refused */
            assert_true(e8c_is_error(e8c_fingerprint_parse(buf, (size_t)k, &back)));
        assert_true(e8c_is_error(e8c_fingerprint_parse(buf, (size_t)n + 1, &back)));
    }
}

/* entropy v1 serializes as format 1 (no field 43: version 1's bytes and
 * id); rans32 and best as format 2 with field 43; a format-2 serialization
 * naming v1 is refused. */
static void test_fingerprint_entropy_formats(void **state)
{
    (void)state;
    e8c_fingerprint fp, back;
    uint8_t b1[8192], b2[8192], ids[3][32];
    e8t_fingerprint(&fp, 30, 3, 64, E8C_ROPE_DEFAULT, 0);
    assert_int_equal(fp.config.entropy, E8C_ENTROPY_RANS32); /* the default */
    int64_t n2 = e8c_fingerprint_serialize(&fp, b2, sizeof b2);
    assert_true(n2 > 0);
    assert_int_equal(b2[0], 0);
    assert_int_equal(e8c_get32(b2 + 5), 2);            /* format 2 */
    assert_int_equal(b2[n2 - 9], 43);                  /* last field: entropy */
    assert_int_equal(e8c_get32(b2 + n2 - 4), E8C_ENTROPY_RANS32);
    for (uint32_t e = 0; e < 3; e++) {
        fp.config.entropy = e;
        assert_int_equal(e8c_fingerprint_id(&fp, ids[e]), 0);
    }
    assert_memory_not_equal(ids[0], ids[1], 32);
    assert_memory_not_equal(ids[0], ids[2], 32);
    fp.config.entropy = E8C_ENTROPY_V1;
    int64_t n1 = e8c_fingerprint_serialize(&fp, b1, sizeof b1);
    assert_int_equal(n1, n2 - 9);
    assert_int_equal(e8c_get32(b1 + 5), 1);            /* format 1 */
    assert_memory_equal(b1 + 9, b2 + 9, (size_t)n1 - 9); /* the same fields 1..42 */
    assert_int_equal(e8c_fingerprint_parse(b1, (size_t)n1, &back), 0);
    assert_int_equal(back.config.entropy, E8C_ENTROPY_V1);
    /* format 2 naming v1: not canonical */
    e8c_put32(b2 + n2 - 4, E8C_ENTROPY_V1);
    assert_int_equal(e8c_fingerprint_parse(b2, (size_t)n2, &back), E8C_ERR_CORRUPT);
    e8c_put32(b2 + n2 - 4, 7);
    assert_int_equal(e8c_fingerprint_parse(b2, (size_t)n2, &back), E8C_ERR_CONFIG);
    e8c_put32(b2 + 5, 3);                                /* format 3: unknown */
    assert_int_equal(e8c_fingerprint_parse(b2, (size_t)n2, &back), E8C_ERR_VERSION);
    /* format 1 followed by a field 43 is refused (trailing bytes) */
    memcpy(b1 + n1, b2 + n2 - 9, 9);
    assert_true(e8c_is_error(e8c_fingerprint_parse(b1, (size_t)n1 + 9, &back)));
}

static void test_fingerprint_id_sensitivity(void **state)
{
    (void)state;
    e8c_fingerprint a, b;
    uint8_t ia[32], ib[32];
    e8t_fingerprint(&a, 30, 3, 64, E8C_ROPE_DEFAULT, 0);
    assert_int_equal(e8c_fingerprint_id(&a, ia), 0);
    for (int k = 0; k < 8; k++) {
        b = a;
        switch (k) {
        case 0: b.rope.theta = 10000; break;
        case 1: b.config.hadamard_seed ^= 1; break;
        case 2: b.config.k_step = 0.6f; break;
        case 3: b.rope.layout = E8C_ROPE_LAYOUT_INTERLEAVED; break;
        case 4: memset(b.model_id, 0, sizeof b.model_id); strcpy(b.model_id, "other"); break;
        case 5: b.src_dtype = E8C_DTYPE_BF16; break;
        case 6: b.config.sink_tokens = 4; break;
        default: b.rope.rotary_dim = 32; break;
        }
        assert_int_equal(e8c_fingerprint_id(&b, ib), 0);
        assert_memory_not_equal(ia, ib, 32);
    }
    b = a;
    b.rope.factor = -0.0; /* canonical: -0 is 0 */
    assert_int_equal(e8c_fingerprint_id(&b, ib), 0);
    assert_memory_equal(ia, ib, 32);
}

static void test_presets(void **state)
{
    (void)state;
    e8c_config c;
    e8c_config_default(&c);
    assert_string_equal(c.preset, E8C_PRESET_DEFAULT);
    unsigned n = 0;
    for (const char *name; (name = e8c_preset_name(n)); n++) {
        assert_int_equal(e8c_preset_apply(name, &c), 0);
        assert_string_equal(c.preset, name);
        assert_true(c.k_step > 0 && c.v_step > 0);
    }
    assert_true(n >= 5);
    assert_int_equal(e8c_preset_apply("K9V9", &c), E8C_ERR_PRESET);
    const char *need[] = {"K4V4", "K4V2", "K3V3", "K3V2", "K2V2"};
    for (int i = 0; i < 5; i++) assert_int_equal(e8c_preset_apply(need[i], &c), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc_check_value),
        cmocka_unit_test(test_error_space),
        cmocka_unit_test(test_f16_conversions),
        cmocka_unit_test(test_fingerprint_valid_all_rope),
        cmocka_unit_test(test_fingerprint_refusals),
        cmocka_unit_test(test_fingerprint_serialize_roundtrip),
        cmocka_unit_test(test_fingerprint_entropy_formats),
        cmocka_unit_test(test_fingerprint_id_sensitivity),
        cmocka_unit_test(test_presets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
