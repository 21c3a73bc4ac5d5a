/*
 * e8c_floors.h: `e8c_bench --floors` (tests/codec/e8c_floors.c): every
 * stage of one layer's K and V frames timed alone at K3V2, next to the
 * tightest loop found for it, against 10 x memcpy_ns (the issue-2 budget).
 */
#ifndef E8C_FLOORS_H
#define E8C_FLOORS_H

#include <stdint.h>

#include "codec/e8codec.h"

/* fp: the data set's fingerprint (fp16 source; the preset is set here);
 * layer_kv: [2][H][T][head_dim] fp16, K then V of one layer; memcpy_ns:
 * ns per element of the bench's memcpy in the same run.  Prints the table;
 * 0, or -1 if a stage's output differs from the library's or the CPU
 * lacks AVX2. */
int e8c_floors(const char *name, const e8c_fingerprint *fp, const uint16_t *layer_kv, uint32_t T,
               double memcpy_ns);

#endif
