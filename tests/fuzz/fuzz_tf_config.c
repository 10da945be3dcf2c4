/* Fuzz target: TensorFlow's TF_CONFIG (px_tf_config_parse, common/launch/tf_config.h) and
 * what libparamex and the server make of it (launch/place.h).
 *
 * Input layout: the whole input is the variable's value (cut at its first NUL byte, as an
 * environment variable would be).
 *
 * Checks, besides ASan/UBSan: the parser returns 0 or -1; a refusal is one line and owns
 * nothing; an accepted value's task is inside its cluster (a worker's rank below chiefs +
 * workers, a ps's index below ps and its port 1..65535), its shard list has one entry per
 * ps; the placement functions agree with the parser. */
#include "fuzz_common.h"
#include "launch/place.h"
#include "launch/tf_config.h"

static const char* g_value;

static const char* get(const char* name, void* ctx) {
  (void)ctx;
  return strcmp(name, "TF_CONFIG") == 0 ? g_value : NULL;
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  char* s = malloc(size + 1);
  FUZZ_CHECK(s != NULL);
  memcpy(s, data, size);
  s[size] = 0;
  g_value = s;
  px_tf_config c;
  char err[256] = "";
  int rc = px_tf_config_parse(s, &c, err, sizeof err);
  FUZZ_CHECK(rc == 0 || rc == -1);
  px_place w, srv;
  char perr[256] = "", listen[64];
  int wrc = px_place_worker(get, NULL, &w, perr, sizeof perr);
  int src = px_place_server(get, NULL, &srv, perr, sizeof perr);
  int lrc = px_place_listen(get, NULL, listen, sizeof listen, perr, sizeof perr);
  char* list = NULL;
  const char* from = NULL;
  int prc = px_place_servers(get, NULL, &list, &from, perr, sizeof perr);
  if (rc != 0) {
    FUZZ_CHECK(err[0] && !strchr(err, '\n') && fuzz_err_ok(err, sizeof err));
    FUZZ_CHECK(c.ps_list == NULL);
    /* an empty value is unset; anything else malformed is refused everywhere */
    FUZZ_CHECK(!s[0] || (wrc == -1 && src == -1 && lrc == -1 && prc == -1));
  } else {
    FUZZ_CHECK(wrc == 0 && src == 0 && lrc == 0 && prc == 0);
    if (c.role == PX_TF_WORKER) {
      FUZZ_CHECK(c.rank < (uint64_t)c.chiefs + c.workers);
      FUZZ_CHECK(w.rank == c.rank && w.world == (int64_t)c.chiefs + c.workers);
    } else {
      FUZZ_CHECK(w.rank == -1 && w.world == -1);
    }
    if (c.role == PX_TF_PS) {
      FUZZ_CHECK(c.index < c.ps && c.ps_port >= 1);
      FUZZ_CHECK(srv.rank == c.index && srv.world == c.ps && listen[0]);
    } else {
      FUZZ_CHECK(srv.rank == -1 && !listen[0]);
    }
    size_t commas = 0;
    for (const char* p = c.ps_list; p && *p; p++) commas += *p == ',';
    FUZZ_CHECK(c.ps == 0 ? c.ps_list == NULL : commas + 1 == c.ps);
    FUZZ_CHECK((list == NULL) == (c.ps_list == NULL));
    FUZZ_CHECK(!list || strcmp(list, c.ps_list) == 0);
  }
  free(list);
  px_tf_config_free(&c);
  free(s);
  return 0;
}
