/*
 * ctl_view.h: the JSON shapes of e8kvctl's results, shared by the online and
 * offline runners so both print the same fields, plus their column specs.
 *
 * A session view holds every SessionInfo field of kvstore.proto (same names)
 * plus derived ones: model_id, codec_preset, raw_fp16_bytes, bpe (all stored
 * bytes x 8 / (2 x layers x kv_heads x head_dim x tokens)) and ratio_to_fp16
 * (raw_fp16_bytes / stored_bytes); null where tokens or bytes are 0.
 */
#ifndef CTL_VIEW_H
#define CTL_VIEW_H

#include <jansson.h>

#include "clients/c/e8kv.h"
#include "clients/cli/ctl_out.h"

json_t *ctl_view_session(const E8kv__V1__SessionInfo *s);
/* Fills buf with a preset name from a codec config: "K3V2", or "default". */
const char *ctl_view_preset(const E8kv__V1__CodecConfig *c, char *buf, size_t n);

extern const ctl_col ctl_cols_ls[];
extern const ctl_col ctl_cols_show[];
extern const ctl_col ctl_cols_stat[];
extern const ctl_col ctl_cols_verify[];
extern const ctl_col ctl_cols_corrupt[];

#endif /* CTL_VIEW_H */
