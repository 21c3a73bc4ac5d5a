/*
 * test_libe8kv.c: libe8kv without a daemon: the error space, argument checks
 * of e8kv_client_open (addresses, TLS files), and calls to an address where
 * nothing listens (UNAVAILABLE, quickly, with the address in the message).
 * The calls against a real e8kvd are in tests/clients/test_ctl_e2e.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "clients/c/e8kv.h"
#include "tests/clients/addr_cases.h"

static void test_status_names(void **state) {
  (void)state;
  assert_string_equal(e8kv_status_name(E8KV_OK), "OK");
  assert_string_equal(e8kv_status_name(E8KV_NOT_FOUND), "NOT_FOUND");
  assert_string_equal(e8kv_status_name(E8KV_UNAUTHENTICATED), "UNAUTHENTICATED");
  assert_string_equal(e8kv_status_name(E8KV_E_PROTOCOL), "E_PROTOCOL");
  assert_string_equal(e8kv_status_name((e8kv_status)77), "UNKNOWN_CODE");
  assert_false(e8kv_is_error(E8KV_OK));
  assert_true(e8kv_is_error(E8KV_DATA_LOSS));
}

static e8kv_status open_addr(const char *addr, e8kv_client **c, e8kv_error *err) {
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = addr;
  return e8kv_client_open(&o, c, err);
}

/* e8kv_client_open takes exactly what e8kvd --listen takes (tests/clients/addr_cases.txt, the
 * table the daemon's, the CLI's and the Python client's tests read too): the others fail at
 * once with E8KV_E_USAGE, the address, the reason and the forms. */
static void test_bad_addresses(void **state) {
  (void)state;
  addr_case cases[64];
  int n = addr_cases_load(cases, 64);
  assert_true(n > 20);
  for (int i = 0; i < n; i++) {
    e8kv_client *c = (e8kv_client *)1;
    e8kv_error err;
    e8kv_status s = open_addr(cases[i].addr, &c, &err);
    if (cases[i].ok) {
      if (s != E8KV_OK) fail_msg("refused \"%s\": %s", cases[i].addr, err.message);
      assert_string_equal(e8kv_client_address(c), cases[i].addr);
      e8kv_client_close(c);
      continue;
    }
    if (s != E8KV_E_USAGE) fail_msg("took \"%s\" (status %d)", cases[i].addr, s);
    assert_null(c);
    assert_int_equal(err.code, E8KV_E_USAGE);
    if (!strstr(err.message, cases[i].want) || !strstr(err.message, cases[i].addr) ||
        !strstr(err.message, "unix:/path/to.sock"))
      fail_msg("\"%s\": message \"%s\" lacks \"%s\"", cases[i].addr, err.message,
               cases[i].want);
  }
  /* A control character (the table cannot hold one). */
  e8kv_client *c = (e8kv_client *)1;
  e8kv_error err;
  assert_int_equal(open_addr("localhost:50051\n", &c, &err), E8KV_E_USAGE);
  assert_non_null(strstr(err.message, "control character at byte 15"));
  assert_int_equal(e8kv_client_open(NULL, &c, NULL), E8KV_E_USAGE);
  e8kv_options o;
  e8kv_options_init(&o);
  assert_int_equal(e8kv_client_open(&o, &c, NULL), E8KV_E_USAGE); /* no address */
  e8kv_client_close(NULL);                                        /* no-op */
}

static void test_tls_files(void **state) {
  (void)state;
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = "127.0.0.1:1";
  o.tls_ca_file = "/nonexistent/ca.pem";
  e8kv_client *c = NULL;
  e8kv_error err;
  assert_int_equal(e8kv_client_open(&o, &c, &err), E8KV_E_IO);
  assert_non_null(strstr(err.message, "/nonexistent/ca.pem"));
  o.tls_ca_file = NULL;
  o.tls_key_file = "/etc/hostname";
  assert_int_equal(e8kv_client_open(&o, &c, &err), E8KV_E_USAGE); /* key without cert */
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void test_no_daemon_is_unavailable(void **state) {
  (void)state;
  const char *addrs[] = {"unix:/nonexistent/e8kvd.sock", "127.0.0.1:1", NULL};
  for (int i = 0; addrs[i]; i++) {
    e8kv_client *c = NULL;
    e8kv_error err;
    assert_int_equal(open_addr(addrs[i], &c, &err), E8KV_OK);
    assert_string_equal(e8kv_client_address(c), addrs[i]);
    e8kv_client_set_deadline_ms(c, 120000);
    double t0 = now_s();
    E8kv__V1__GetStatsResponse *r = (E8kv__V1__GetStatsResponse *)1;
    assert_int_equal(e8kv_get_stats(c, &r, &err), E8KV_UNAVAILABLE);
    assert_null(r);
    assert_non_null(strstr(err.message, addrs[i]));
    assert_non_null(strstr(err.message, "GetStats"));
    int serving = -1;
    assert_int_equal(e8kv_health_check(c, "", &serving, &err), E8KV_UNAVAILABLE);
    /* Streams fail the same way. */
    E8kv__V1__PutHeader h = E8KV__V1__PUT_HEADER__INIT;
    e8kv_put *p = NULL;
    e8kv_status s = e8kv_put_begin(c, &h, &p, &err);
    if (s == E8KV_OK) {
      uint32_t tok = 1;
      s = e8kv_put_chunk(p, &tok, 1, "x", 1, NULL, 0, &err);
      E8kv__V1__PutChunksResponse *pr = NULL;
      if (s == E8KV_OK) s = e8kv_put_finish(p, &pr, &err);
      else e8kv_put_abort(p);
      assert_null(pr);
    }
    assert_int_equal(s, E8KV_UNAVAILABLE);
    /* failed fast, not at the 120 s deadline: 20 s is 6x below it and far above a refused
     * connection on a loaded machine (< 5 s of time() against a 5 s deadline was neither) */
    assert_true(now_s() - t0 < 20);
    e8kv_client_close(c);
  }
}

/* Something listens but never answers (a stopped or hung daemon): unary calls and streams
 * fail at their deadline with E8KV_DEADLINE_EXCEEDED, naming the address and the deadline. */
static void test_silent_address_deadline(void **state) {
  (void)state;
  char dir[] = "/tmp/e8kv-silent-XXXXXX", path[64], addr[96];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/s.sock", dir);
  snprintf(addr, sizeof addr, "unix:%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(fd, 64), 0); /* the kernel accepts; nobody answers */
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = addr;
  o.deadline_ms = 1500;
  o.stream_deadline_ms = 1500;
  e8kv_client *c = NULL;
  e8kv_error err;
  assert_int_equal(e8kv_client_open(&o, &c, &err), E8KV_OK);
  for (int k = 0; k < 2; k++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    e8kv_status s;
    if (k == 0) {
      E8kv__V1__GetStatsResponse *r = NULL;
      s = e8kv_get_stats(c, &r, &err);
      assert_null(r);
    } else {
      E8kv__V1__PutHeader h = E8KV__V1__PUT_HEADER__INIT;
      e8kv_put *p = NULL;
      s = e8kv_put_begin(c, &h, &p, &err);
      if (s == E8KV_OK) {
        uint32_t tok = 1;
        s = e8kv_put_chunk(p, &tok, 1, "x", 1, NULL, 0, &err);
        E8kv__V1__PutChunksResponse *pr = NULL;
        if (s == E8KV_OK) s = e8kv_put_finish(p, &pr, &err);
        else e8kv_put_abort(p);
      }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (s != E8KV_DEADLINE_EXCEEDED || took < 1.0 || took > 10.0 ||
        !strstr(err.message, addr) || !strstr(err.message, "1500 ms deadline"))
      fail_msg("call %d: status %d after %.2f s: %s", k, s, took, err.message);
  }
  e8kv_client_close(c);
  close(fd);
  unlink(path);
  rmdir(dir);
}


/* Accepts and closes connections on a listening socket until *stop; counts them. */
typedef struct accept_loop {
  int fd;
  atomic_int stop, accepts;
} accept_loop;

static void *accept_run(void *arg) {
  accept_loop *l = arg;
  while (!atomic_load(&l->stop)) {
    int a = accept(l->fd, NULL, NULL); /* blocking; shutdown() of fd ends it */
    if (a < 0) continue;
    atomic_fetch_add(&l->accepts, 1);
    shutdown(a, SHUT_RDWR);
    close(a);
  }
  return NULL;
}

/* After a daemon outage a long-lived client tries to reconnect at most ~1 s apart (gRPC's
 * default backoff grows 1.6x per attempt up to 2 min, so calls kept failing long after e8kvd
 * was back): count the connection attempts that reach a socket which appears after a 15 s
 * outage and accepts and closes each one (a daemon not ready yet). */
static void test_reconnect_backoff_is_bounded(void **state) {
  (void)state;
  char dir[] = "/tmp/e8kv-reconnect-XXXXXX", path[64], addr[96];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/s.sock", dir);
  snprintf(addr, sizeof addr, "unix:%s", path);
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = addr;
  o.deadline_ms = 10000; /* the outage's calls fail at once, long before (500 ms raced a
                          * loaded machine: DEADLINE_EXCEEDED instead of UNAVAILABLE) */
  e8kv_client *c = NULL;
  e8kv_error err;
  assert_int_equal(e8kv_client_open(&o, &c, &err), E8KV_OK);
  int serving;
  for (double t0 = now_s(); now_s() - t0 < 15;) {
    assert_int_equal(e8kv_health_check(c, "", &serving, &err), E8KV_UNAVAILABLE);
    usleep(100000);
  }
  accept_loop l = {.fd = socket(AF_UNIX, SOCK_STREAM, 0)};
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  assert_int_equal(bind(l.fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(l.fd, 64), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, accept_run, &l), 0);
  e8kv_client_set_deadline_ms(c, 2000); /* calls in flight drive the connection attempts */
  for (double t1 = now_s(); now_s() - t1 < 12;) {
    e8kv_health_check(c, "", &serving, &err);
    usleep(20000);
  }
  atomic_store(&l.stop, 1);
  shutdown(l.fd, SHUT_RDWR);
  pthread_join(th, NULL);
  e8kv_client_close(c);
  close(l.fd);
  unlink(path);
  rmdir(dir);
  if (atomic_load(&l.accepts) < 4) /* gRPC's default: at most 3 (>= 5.2 s apart by now) */
    fail_msg("%d connection attempts in 12 s", atomic_load(&l.accepts));
}

static void test_null_arguments(void **state) {
  (void)state;
  e8kv_client *c = NULL;
  assert_int_equal(open_addr("127.0.0.1:1", &c, NULL), E8KV_OK);
  e8kv_error err;
  assert_int_equal(e8kv_lookup(c, NULL, NULL, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_get_chunks(c, NULL, NULL, NULL, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_put_chunk(NULL, NULL, 0, NULL, 0, NULL, 0, &err), E8KV_E_USAGE);
  e8kv_put_abort(NULL);
  e8kv_msg_free(NULL);
  e8kv_client_close(c);
}

/* e8kv_fetch: argument checks, and a fetch from no daemon fails fast with UNAVAILABLE on
 * every wait (the first stream's error), stats stay zero, close joins the threads. */
static void test_fetch_usage_and_no_daemon(void **state) {
  (void)state;
  e8kv_client *c[3] = {NULL, NULL, NULL};
  for (int i = 0; i < 3; i++) assert_int_equal(open_addr("unix:/nonexistent/e8kvd.sock", &c[i], NULL), E8KV_OK);
  uint8_t keys[5 * 32];
  memset(keys, 7, sizeof keys);
  uint8_t buf[4096];
  e8kv_fetch *f = (e8kv_fetch *)1;
  e8kv_error err;
  assert_int_equal(e8kv_fetch_start(c, 3, keys, 5, buf, sizeof buf, 0, NULL, NULL, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_fetch_start(NULL, 3, keys, 5, buf, sizeof buf, 0, NULL, &f, &err), E8KV_E_USAGE);
  assert_null(f);
  assert_int_equal(e8kv_fetch_start(c, 3, NULL, 5, buf, sizeof buf, 0, NULL, &f, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_fetch_start(c, 3, keys, 0, buf, sizeof buf, 0, NULL, &f, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_fetch_start(c, 3, keys, 5, NULL, sizeof buf, 0, NULL, &f, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_fetch_start(c, 3, keys, 5, buf, sizeof buf, 100, NULL, &f, &err), E8KV_E_USAGE);
  assert_non_null(strstr(err.message, "max_piece_bytes"));
  e8kv_client *holes[2] = {c[0], NULL};
  assert_int_equal(e8kv_fetch_start(holes, 2, keys, 5, buf, sizeof buf, 0, NULL, &f, &err), E8KV_E_USAGE);
  time_t t0 = time(NULL);
  assert_int_equal(e8kv_fetch_start(c, 3, keys, 5, buf, sizeof buf, 0, keys, &f, &err), E8KV_OK);
  e8kv_fetched out[4];
  size_t n = 99;
  assert_int_equal(e8kv_fetch_wait(f, NULL, 4, -1, &n, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_fetch_wait(f, out, 4, 10000, &n, &err), E8KV_UNAVAILABLE);
  assert_int_equal(n, 0);
  assert_non_null(strstr(err.message, "GetChunks"));
  assert_int_equal(e8kv_fetch_wait(f, out, 4, 0, &n, &err), E8KV_UNAVAILABLE); /* sticky */
  uint64_t bytes = 1, over = 1;
  size_t done = 1;
  e8kv_fetch_stats(f, &bytes, &over, &done);
  assert_true(bytes == 0 && over == 0 && done == 0);
  e8kv_fetch_close(f);
  e8kv_fetch_close(NULL);
  assert_true(time(NULL) - t0 < 5);
  for (int i = 0; i < 3; i++) e8kv_client_close(c[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status_names),
      cmocka_unit_test(test_bad_addresses),
      cmocka_unit_test(test_tls_files),
      cmocka_unit_test(test_no_daemon_is_unavailable),
      cmocka_unit_test(test_silent_address_deadline),
      cmocka_unit_test(test_reconnect_backoff_is_bounded),
      cmocka_unit_test(test_null_arguments),
      cmocka_unit_test(test_fetch_usage_and_no_daemon),
  };
  return cmocka_run_group_tests_name("libe8kv", tests, NULL, NULL);
}
