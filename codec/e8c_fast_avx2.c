/*
 * e8c_fast_avx2.c: the fast body built with -mavx2 -mf16c (codec.mk);
 * called only when cpuid reports both (e8c_fast.c).
 */
#define E8C_SFX avx2
#include "codec/e8c_fast_body.h"
