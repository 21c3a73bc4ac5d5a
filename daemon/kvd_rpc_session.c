/* kvd_rpc_session.c: CreateSession, AppendSession, GetSession, ListSessions, DeleteSession.
 * Every write takes the session's write lock (kvd_session_lock), so two calls never change one
 * session at the same time; the second gets ABORTED at once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/kvd_log.h"
#include "daemon/kvd_session.h"

static int reply_session(kvd_app *app, kvd_call *call, const kvd_principal *who,
                         const char *name, int include_keys, E8kv__V1__SessionInfo **slot,
                         ProtobufCMessage *resp, kvd_status *st) {
  kvd_sess s;
  kvd_sess_pb pb;
  memset(&pb, 0, sizeof pb);
  int rc = kvd_sess_load(app->store, who->ns_id, name, 1, &s, st);
  if (rc == 0 && include_keys && s.info.n_chunks > app->cfg->max_chunks_per_call)
    rc = kvd_error(st, KVD_RESOURCE, "session '%s' has %llu chunks, over "
                                     "--max-chunks-per-call = %u: read its keys with "
                                     "GetChunks by range", name,
                   (unsigned long long)s.info.n_chunks, app->cfg->max_chunks_per_call);
  if (rc == 0) rc = kvd_sess_to_pb(app->store, who->ns_id, &s, include_keys, &pb, st);
  if (rc == 0) {
    *slot = &pb.m;
    if (kvd_call_send(call, resp) != 0) rc = kvd_call_check(call, st);
    *slot = NULL;
  }
  kvd_sess_pb_free(&pb);
  if (s.meta) kvd_sess_free(&s);
  return rc;
}

void kvd_rpc_create_session(kvd_app *app, kvd_call *call, const kvd_principal *who,
                            kvd_status *st) {
  E8kv__V1__CreateSessionRequest *rq = (E8kv__V1__CreateSessionRequest *)kvd_recv_request(
      call, &e8kv__v1__create_session_request__descriptor, st);
  if (!rq) return;
  kvd_fp fp;
  uint32_t ct;
  uint8_t *meta = NULL;
  size_t meta_len = 0, nm = rq->n_metadata;
  char **mk = calloc(nm + 1, sizeof *mk), **mv = calloc(nm + 1, sizeof *mv);
  int locked = 0;
  E8kv__V1__CreateSessionResponse r;
  e8kv__v1__create_session_response__init(&r);
  for (size_t i = 0; mk && mv && i < nm; i++) {
    mk[i] = rq->metadata[i]->key;
    mv[i] = rq->metadata[i]->value;
  }
  if (!mk || !mv) { kvd_fail(st, KVD_RESOURCE, "out of memory"); goto out; }
  if (kvd_sess_name_check(rq->name, st) || kvd_fp_resolve(rq->fingerprint, &fp, st) ||
      kvd_sess_chunk_tokens(rq->chunk_tokens, &ct, st) ||
      kvd_sess_meta_check(nm, mk, mv, st) ||
      kvd_sess_meta_pack(ct, NULL, nm, mk, mv, &meta, &meta_len, st))
    goto out;
  if (kvd_session_lock(app, who->ns_id, rq->name, st) != 0) goto out;
  locked = 1;
  if (kvd_fp_register(app->store, &fp, st) != 0) goto out;
  int e = e8s_session_create(app->store, who->ns_id, rq->name, fp.id, meta, meta_len, 0);
  r.created = e == E8S_OK;
  if (e == E8S_ERR_EXISTS) {
    kvd_sess s;
    if (!rq->if_not_exists) {
      kvd_fail(st, KVD_EXISTS, "session '%s' already exists", rq->name);
      goto out;
    }
    if (kvd_sess_load(app->store, who->ns_id, rq->name, 0, &s, st) != 0) goto out;
    int same = memcmp(s.info.fp_id, fp.id, E8S_KEY_BYTES) == 0 && s.meta->chunk_tokens == ct;
    kvd_sess_free(&s);
    if (!same) {
      kvd_fail(st, KVD_PRECONDITION, "session '%s' exists with another fingerprint or "
                                     "chunk_tokens", rq->name);
      goto out;
    }
  } else if (e != E8S_OK) {
    kvd_status_from_store(st, e, "create session");
    goto out;
  }
  reply_session(app, call, who, rq->name, 0, &r.session, &r.base, st);
out:
  if (locked) kvd_session_unlock(app, who->ns_id, rq->name);
  free(mk);
  free(mv);
  free(meta);
  e8kv__v1__create_session_request__free_unpacked(rq, NULL);
}

/* Computes the keys of the chunks that token_ids adds after the session's end and checks
 * that each is stored; *keys is malloc'ed. */
static int append_keys(kvd_app *app, const kvd_principal *who, const kvd_sess *s,
                       const uint32_t *tok, size_t n, uint8_t (**keys)[E8S_KEY_BYTES],
                       size_t *nk, kvd_status *st) {
  uint32_t ct = s->meta->chunk_tokens;
  if (s->info.n_tokens % ct)
    return kvd_error(st, KVD_PRECONDITION, "session '%s' ends inside a chunk (%llu tokens): "
                                           "nothing can follow a short chunk", s->info.name,
                     (unsigned long long)s->info.n_tokens);
  *nk = (n + ct - 1) / ct;
  *keys = malloc(*nk * E8S_KEY_BYTES);
  if (!*keys) return kvd_error(st, KVD_RESOURCE, "out of memory");
  const uint8_t *parent = s->info.n_chunks ? s->keys[s->info.n_chunks - 1] : NULL;
  for (size_t i = 0; i < *nk; i++) {
    size_t t0 = i * ct, m = n - t0 < ct ? n - t0 : ct;
    e8s_chunk_key(who->salt, s->info.fp_id, parent, tok + t0, m, (*keys)[i]);
    e8s_chunk_info ci;
    int rc = e8s_chunk_stat(app->store, who->ns_id, (*keys)[i], &ci);
    if (rc == E8S_ERR_NOTFOUND)
      return kvd_error(st, KVD_NOT_FOUND, "tokens [%llu, %llu) of the session are not stored "
                                          "(chunk %zu of this request)",
                       (unsigned long long)(s->info.n_tokens + t0),
                       (unsigned long long)(s->info.n_tokens + t0 + m), i);
    if (rc != E8S_OK) return kvd_store_error(st, rc, "stat chunk");
    parent = (*keys)[i];
  }
  return 0;
}

void kvd_rpc_append_session(kvd_app *app, kvd_call *call, const kvd_principal *who,
                            kvd_status *st) {
  E8kv__V1__AppendSessionRequest *rq = (E8kv__V1__AppendSessionRequest *)kvd_recv_request(
      call, &e8kv__v1__append_session_request__descriptor, st);
  if (!rq) return;
  kvd_sess s = {0};
  uint8_t(*keys)[E8S_KEY_BYTES] = NULL;
  ProtobufCBinaryData *kb = NULL;
  size_t nk = 0;
  int locked = 0;
  if (kvd_sess_name_check(rq->name, st) != 0) goto out;
  if (rq->n_token_ids == 0 || rq->n_token_ids > app->cfg->max_lookup_tokens) {
    kvd_fail(st, KVD_INVALID, "token_ids must hold 1..%u ids (--max-lookup-tokens), got %zu",
             app->cfg->max_lookup_tokens, rq->n_token_ids);
    goto out;
  }
  if (kvd_session_lock(app, who->ns_id, rq->name, st) != 0) goto out;
  locked = 1;
  if (kvd_sess_load(app->store, who->ns_id, rq->name, 1, &s, st) != 0) goto out;
  if (rq->session_expect_case &&
      rq->expect_session_tokens != s.info.n_tokens) {
    kvd_fail(st, KVD_PRECONDITION, "session '%s' holds %llu tokens, expected %llu", rq->name,
             (unsigned long long)s.info.n_tokens,
             (unsigned long long)rq->expect_session_tokens);
    goto out;
  }
  if (append_keys(app, who, &s, rq->token_ids, rq->n_token_ids, &keys, &nk, st) != 0)
    goto out;
  int e = e8s_session_append(app->store, who->ns_id, rq->name,
                             (const uint8_t(*)[E8S_KEY_BYTES])keys, nk);
  if (e == E8S_ERR_CONFLICT) {
    kvd_fail(st, KVD_ABORTED, "session '%s' changed during the call", rq->name);
    goto out;
  }
  if (e != E8S_OK) { kvd_status_from_store(st, e, "append to session"); goto out; }
  E8kv__V1__AppendSessionResponse r;
  e8kv__v1__append_session_response__init(&r);
  kb = calloc(nk, sizeof *kb);
  if (!kb) { kvd_fail(st, KVD_RESOURCE, "out of memory"); goto out; }
  for (size_t i = 0; i < nk; i++) kb[i] = (ProtobufCBinaryData){E8S_KEY_BYTES, keys[i]};
  r.n_chunk_keys = nk;
  r.chunk_keys = kb;
  reply_session(app, call, who, rq->name, 0, &r.session, &r.base, st);
out:
  if (locked) kvd_session_unlock(app, who->ns_id, rq->name);
  if (s.meta) kvd_sess_free(&s);
  free(keys);
  free(kb);
  e8kv__v1__append_session_request__free_unpacked(rq, NULL);
}

void kvd_rpc_get_session(kvd_app *app, kvd_call *call, const kvd_principal *who,
                         kvd_status *st) {
  E8kv__V1__GetSessionRequest *rq = (E8kv__V1__GetSessionRequest *)kvd_recv_request(
      call, &e8kv__v1__get_session_request__descriptor, st);
  if (!rq) return;
  E8kv__V1__GetSessionResponse r;
  e8kv__v1__get_session_response__init(&r);
  if (kvd_sess_name_check(rq->name, st) == 0)
    reply_session(app, call, who, rq->name, rq->include_chunk_keys, &r.session, &r.base, st);
  e8kv__v1__get_session_request__free_unpacked(rq, NULL);
}

/* 1 if the session's fingerprint has model_id (cached per call on the last fingerprint). */
static int model_matches(kvd_app *app, const e8s_session_info *si, const char *model,
                         uint8_t last_id[E8S_KEY_BYTES], int *last_ok) {
  if (memcmp(last_id, si->fp_id, E8S_KEY_BYTES) == 0) return *last_ok;
  kvd_fp fp;
  kvd_status st;
  *last_ok = kvd_fp_load(app->store, si->fp_id, &fp, &st) == 0 &&
             strcmp(fp.fp.model_id, model) == 0;
  memcpy(last_id, si->fp_id, E8S_KEY_BYTES);
  return *last_ok;
}

void kvd_rpc_list_sessions(kvd_app *app, kvd_call *call, const kvd_principal *who,
                           kvd_status *st) {
  E8kv__V1__ListSessionsRequest *rq = (E8kv__V1__ListSessionsRequest *)kvd_recv_request(
      call, &e8kv__v1__list_sessions_request__descriptor, st);
  if (!rq) return;
  uint32_t page = rq->page_size ? rq->page_size : 100;
  e8s_session_info *buf = NULL;
  kvd_sess_pb *pbs = NULL;
  kvd_sess *loaded = NULL;
  E8kv__V1__SessionInfo **ptrs = NULL;
  size_t n_out = 0;
  char after[E8S_NAME_MAX + 1];
  snprintf(after, sizeof after, "%s", rq->page_token);
  int more = 1;
  if (page > 1000) { kvd_fail(st, KVD_INVALID, "page_size %u is over 1000", page); goto out; }
  if (rq->fingerprint_id.len && rq->fingerprint_id.len != E8S_KEY_BYTES) {
    kvd_fail(st, KVD_INVALID, "fingerprint_id must be %d bytes", E8S_KEY_BYTES);
    goto out;
  }
  buf = calloc(page, sizeof *buf);
  pbs = calloc(page, sizeof *pbs);
  loaded = calloc(page, sizeof *loaded);
  ptrs = calloc(page, sizeof *ptrs);
  if (!buf || !pbs || !loaded || !ptrs) { kvd_fail(st, KVD_RESOURCE, "out of memory"); goto out; }
  e8s_session_filter f = {.name_prefix = rq->name_prefix,
                          .fp_id = rq->fingerprint_id.len ? rq->fingerprint_id.data : NULL};
  uint8_t last_id[E8S_KEY_BYTES] = {0};
  int last_ok = 0, cut = 0;
  /* A page also ends before the reply would pass --get-piece-bytes (3 MiB by default, under
   * the 4 MiB receive limit of gRPC clients; sessions carry up to 64 KiB of metadata each):
   * next_page_token then continues at the session left out. */
  uint64_t budget = app->cfg->get_piece_bytes, bytes = 0;
  while (n_out < page && more && !cut) {
    size_t got = 0;
    int e = e8s_session_list(app->store, who->ns_id, &f, after, buf, page, &got, &more);
    if (e != E8S_OK) { kvd_status_from_store(st, e, "list sessions"); goto out; }
    if (got == 0) { more = 0; break; }
    for (size_t i = 0; i < got && n_out < page; i++) {
      snprintf(after, sizeof after, "%s", buf[i].name);
      if (*rq->model_id && !model_matches(app, &buf[i], rq->model_id, last_id, &last_ok))
        continue;
      kvd_status tmp;
      if (kvd_sess_load(app->store, who->ns_id, buf[i].name, 1, &loaded[n_out], &tmp) != 0)
        continue; /* deleted meanwhile */
      if (kvd_sess_to_pb(app->store, who->ns_id, &loaded[n_out], 0, &pbs[n_out], &tmp) != 0) {
        kvd_sess_free(&loaded[n_out]);
        continue;
      }
      uint64_t sz = e8kv__v1__session_info__get_packed_size(&pbs[n_out].m) + 8;
      if (n_out > 0 && bytes + sz > budget) { /* full: this one starts the next page */
        kvd_sess_pb_free(&pbs[n_out]);
        kvd_sess_free(&loaded[n_out]);
        snprintf(after, sizeof after, "%s", pbs[n_out - 1].name);
        more = cut = 1;
        break;
      }
      bytes += sz;
      ptrs[n_out] = &pbs[n_out].m;
      n_out++;
      if (n_out == page && i + 1 < got) more = 1;
    }
  }
  E8kv__V1__ListSessionsResponse r;
  e8kv__v1__list_sessions_response__init(&r);
  r.n_sessions = n_out;
  r.sessions = ptrs;
  r.next_page_token = more ? after : "";
  if (kvd_call_send(call, &r.base) != 0) kvd_call_check(call, st);
out:
  for (size_t i = 0; i < n_out; i++) {
    kvd_sess_pb_free(&pbs[i]);
    kvd_sess_free(&loaded[i]);
  }
  free(buf);
  free(pbs);
  free(loaded);
  free(ptrs);
  e8kv__v1__list_sessions_request__free_unpacked(rq, NULL);
}

/* Why kvd_purge_defer failed (rc), in st: the namespace's --max-purge-pending share is full
 * (RESOURCE_EXHAUSTED) or out of memory. `done` says what the call did before. */
static void purge_full(kvd_app *app, int rc, const char *done, kvd_status *st) {
  if (rc == KVD_PURGE_FULL)
    kvd_fail(st, KVD_RESOURCE, "%s; this namespace already has %zu chunks waiting to be purged "
             "when a read or a lookup lease ends, the --max-purge-pending limit: retry after "
             "--lookup-lease-ms", done, kvd_purge_limit(app->purge));
  else
    kvd_fail(st, KVD_RESOURCE, "%s; out of memory adding to the pending purges", done);
}

/* A chunk purge found pinned (BUSY) by a read or a lookup lease only (no session lists it):
 * it goes to the pending list (kvd_purge.h), to be deleted when that ends. 0, or -1
 * (RESOURCE_EXHAUSTED in st) when the namespace's share of the list is full. */
static int purge_later(kvd_app *app, uint32_t ns_id, const kvd_sess *s, uint32_t purged,
                       const uint8_t key[E8S_KEY_BYTES], kvd_status *st) {
  int rc = kvd_purge_defer(app->purge, ns_id, key);
  if (rc == 0) return 0;
  char done[E8S_NAME_MAX + 96];
  snprintf(done, sizeof done, "session '%s' deleted, %u of its %llu chunks purged",
           s->info.name, purged, (unsigned long long)s->info.n_chunks);
  purge_full(app, rc, done, st);
  return -1;
}

/* DeleteSession's purge_chunks: deletes each chunk of the (just deleted) session s that
 * nothing pins now, in one store call (e8s_chunks_delete: a write transaction per 1024 chunks;
 * one commit per chunk took 6.6 s for 2000); a pinned one (BUSY: another session, a read, a
 * lookup lease) is counted as kept, and as pending when only a read or a lease holds it
 * (deleted when that ends, see purge_later); one already gone (evicted meanwhile) as neither.
 * Another store error fails the call, saying how far it got (the session is deleted by then). */
static int purge_chunks(kvd_app *app, uint32_t ns_id, const kvd_sess *s,
                        E8kv__V1__DeleteSessionResponse *r, kvd_status *st) {
  size_t n = s->info.n_chunks;
  uint32_t *ns = malloc((n ? n : 1) * sizeof *ns), *refs = malloc((n ? n : 1) * sizeof *refs);
  int *res = malloc((n ? n : 1) * sizeof *res);
  int rc = 0;
  if (!ns || !refs || !res) {
    rc = kvd_error(st, KVD_RESOURCE, "session '%s' deleted; out of memory purging its chunks",
                   s->info.name);
    goto out;
  }
  for (size_t i = 0; i < n; i++) ns[i] = ns_id;
  e8s_chunks_delete(app->store, ns, (const uint8_t(*)[E8S_KEY_BYTES])s->keys, n, res, refs);
  uint32_t purged = 0; /* by e8s_chunks_delete, whatever fails below */
  for (size_t i = 0; i < n; i++) purged += res[i] == E8S_OK;
  for (size_t i = 0; i < n && rc == 0; i++) {
    int e = res[i];
    if (e == E8S_OK) r->chunks_purged++;
    else if (e == E8S_ERR_BUSY) {
      r->chunks_kept++;
      if (refs[i] == 0) { /* only a read or a lease holds it */
        if ((rc = purge_later(app, ns_id, s, purged, s->keys[i], st)) == 0)
          r->chunks_pending++;
      }
    } else if (e != E8S_ERR_NOTFOUND) {
      char what[E8S_NAME_MAX + 160];
      snprintf(what, sizeof what, "session '%s' deleted, %u of its %llu chunks purged, then "
               "purge chunk %llu", s->info.name, r->chunks_purged,
               (unsigned long long)s->info.n_chunks, (unsigned long long)i);
      kvd_status_from_store(st, e, what);
      rc = -1;
    }
  }
  if (rc == 0)
    KVD_INFO("session_purged", "ns=%u chunks_purged=%u chunks_kept=%u chunks_pending=%u",
             ns_id, r->chunks_purged, r->chunks_kept, r->chunks_pending);
out:
  free(ns), free(refs), free(res);
  return rc;
}

void kvd_rpc_delete_session(kvd_app *app, kvd_call *call, const kvd_principal *who,
                            kvd_status *st) {
  E8kv__V1__DeleteSessionRequest *rq = (E8kv__V1__DeleteSessionRequest *)kvd_recv_request(
      call, &e8kv__v1__delete_session_request__descriptor, st);
  if (!rq) return;
  kvd_sess s = {0};
  int locked = 0;
  if (kvd_sess_name_check(rq->name, st) != 0) goto out;
  if (kvd_session_lock(app, who->ns_id, rq->name, st) != 0) goto out;
  locked = 1;
  if (kvd_sess_load(app->store, who->ns_id, rq->name, 1, &s, st) != 0) goto out;
  if (rq->session_expect_case && rq->expect_session_tokens != s.info.n_tokens) {
    kvd_fail(st, KVD_PRECONDITION, "session '%s' holds %llu tokens, expected %llu", rq->name,
             (unsigned long long)s.info.n_tokens,
             (unsigned long long)rq->expect_session_tokens);
    goto out;
  }
  uint32_t unpinned = 0;
  for (uint64_t i = 0; i < s.info.n_chunks; i++) {
    e8s_chunk_info ci;
    if (e8s_chunk_stat(app->store, who->ns_id, s.keys[i], &ci) == E8S_OK &&
        ci.session_refs <= 1)
      unpinned++;
  }
  int e = e8s_session_delete(app->store, who->ns_id, rq->name);
  if (e != E8S_OK) { kvd_status_from_store(st, e, "delete session"); goto out; }
  E8kv__V1__DeleteSessionResponse r;
  e8kv__v1__delete_session_response__init(&r);
  r.chunks_unpinned = unpinned;
  if (rq->purge_chunks && purge_chunks(app, who->ns_id, &s, &r, st) != 0) goto out;
  if (kvd_call_send(call, &r.base) != 0) kvd_call_check(call, st);
out:
  if (locked) kvd_session_unlock(app, who->ns_id, rq->name);
  if (s.meta) kvd_sess_free(&s);
  e8kv__v1__delete_session_request__free_unpacked(rq, NULL);
}

/* PurgeUnlisted's pinned chunks: each goes to the pending list (a full list fails the call). */
typedef struct unlisted_ctx {
  kvd_app *app;
  uint32_t ns_id;
  uint64_t pending;
  int full; /* kvd_purge_defer's first error */
} unlisted_ctx;

static void unlisted_held(void *vc, const uint8_t key[E8S_KEY_BYTES]) {
  unlisted_ctx *c = vc;
  int rc = c->full ? c->full : kvd_purge_defer(c->app->purge, c->ns_id, key);
  if (rc == 0) c->pending++;
  else c->full = rc;
}

void kvd_rpc_purge_unlisted(kvd_app *app, kvd_call *call, const kvd_principal *who,
                            kvd_status *st) {
  E8kv__V1__PurgeUnlistedRequest *rq = (E8kv__V1__PurgeUnlistedRequest *)kvd_recv_request(
      call, &e8kv__v1__purge_unlisted_request__descriptor, st);
  if (!rq) return;
  e8kv__v1__purge_unlisted_request__free_unpacked(rq, NULL);
  unlisted_ctx c = {.app = app, .ns_id = who->ns_id};
  e8s_purge_report rep;
  int e = e8s_purge_unlisted(app->store, who->ns_id, unlisted_held, &c, &rep);
  KVD_INFO("purge_unlisted", "ns=%u chunks_purged=%llu bytes_purged=%llu chunks_pending=%llu "
           "error=%s", who->ns_id, (unsigned long long)rep.chunks_purged,
           (unsigned long long)rep.bytes_purged, (unsigned long long)c.pending,
           e == E8S_OK ? "none" : e8s_error_name(e));
  if (e != E8S_OK) {
    char what[128];
    snprintf(what, sizeof what, "purge unlisted chunks (%llu purged before the error)",
             (unsigned long long)rep.chunks_purged);
    kvd_status_from_store(st, e, what);
    return;
  }
  if (c.full) {
    char done[160];
    snprintf(done, sizeof done, "%llu chunks purged, %llu put to wait for their read or lookup "
             "lease, %llu more held so", (unsigned long long)rep.chunks_purged,
             (unsigned long long)c.pending, (unsigned long long)(rep.chunks_held - c.pending));
    purge_full(app, c.full, done, st);
    return;
  }
  E8kv__V1__PurgeUnlistedResponse r;
  e8kv__v1__purge_unlisted_response__init(&r);
  r.chunks_purged = rep.chunks_purged;
  r.bytes_purged = rep.bytes_purged;
  r.chunks_pending = c.pending;
  if (kvd_call_send(call, &r.base) != 0) kvd_call_check(call, st);
}
