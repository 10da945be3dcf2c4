/* paramex health (cli_health.h). */
#include "cli_health.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/dtype.h"
#include "codec/payload.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/flags.h"
#include "util/iov.h"
#include "util/str.h"
#include "wire/chunk_msg.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"

#include "cli_common.h"

/* ---- health ------------------------------------------------------------------------- */

/* One Check call. Returns the gRPC status; on OK *serving receives the ServingStatus. */
static int health_once(px_rpc_channel* ch, const uint8_t* req, size_t req_len, int64_t timeout_ms,
                       bool wait_for_ready, int* serving, char* details, size_t cap) {
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  int st = px_rpc_unary(ch, HEALTH_CHECK_PATH, req, req_len, timeout_ms, wait_for_ready, &resp,
                         &resp_len, details, cap);
  if (st == PX_ST_OK) {
    Grpc__Health__V1__HealthCheckResponse* r =
        grpc__health__v1__health_check_response__unpack(NULL, resp_len, resp);
    if (!r) {
      st = PX_ST_INTERNAL;
      snprintf(details, cap, "malformed HealthCheckResponse");
    } else {
      *serving = (int)r->status;
      grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    }
  }
  free(resp);
  return st;
}

static const char* serving_name(int s, char* buf, size_t cap) {
  switch (s) {
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN: return "UNKNOWN";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING: return "SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING: return "NOT_SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
      return "SERVICE_UNKNOWN";
    default: snprintf(buf, cap, "UNKNOWN(%d)", s); return buf;
  }
}

int cmd_health(int argc, char** argv) {
  double wait_s = 0;
  const char* service = "";
  const px_flag flags[] = {
      {"wait", PX_FLAG_F64, &wait_s, 0, WAIT_MAX_S, "SECONDS",
       "retry until SERVING or this many seconds passed (0: one attempt, 5 s deadline)"},
      {"service", PX_FLAG_STR, &service, 0, 0, "NAME", "service to check (empty: the server)"},
      CONN_FLAGS,
  };
  const char* addr = NULL;
  int rc = parse_cmd("health", flags, sizeof flags / sizeof flags[0], argc, argv, &addr);
  if (rc >= 0) return rc;

  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char*)service;
  size_t req_len = grpc__health__v1__health_check_request__get_packed_size(&req);
  uint8_t* req_buf = malloc(req_len ? req_len : 1);
  if (!req_buf) {
    fprintf(stderr, "paramex: health %s: out of memory\n", addr);
    return 1;
  }
  grpc__health__v1__health_check_request__pack(&req, req_buf);

  px_rpc_init();
  char err[256], details[512];
  px_rpc_channel* ch = open_channel(addr, err, sizeof err);
  int st = PX_ST_UNKNOWN, serving = -1;
  details[0] = '\0';
  if (!ch) {
    st = PX_ST_INVALID_ARGUMENT;
    px_strlcpy(details, err, sizeof details);
  } else if (wait_s <= 0) {
    st = health_once(ch, req_buf, req_len, HEALTH_TIMEOUT_MS, false, &serving, details,
                     sizeof details);
  } else {
    /* Each attempt may use all the time that is left (wait_for_ready queues it until the
     * server is reachable). An attempt that ends early (NOT_SERVING, the server not up
     * yet, a refused connection) is retried after a pause that grows from 50 ms to 1 s,
     * which also bounds the number of attempts by about 8 + wait seconds. */
    const uint64_t deadline = px_now_ms() + (uint64_t)(wait_s * 1000.0 + 0.5);
    const unsigned max_attempts = 16 + (unsigned)wait_s;
    uint64_t pause = 50;
    for (unsigned attempt = 0; attempt < max_attempts; attempt++) {
      uint64_t now = px_now_ms();
      int64_t left = deadline > now ? (int64_t)(deadline - now) : 0;
      if (attempt > 0 && left == 0) break;
      serving = -1;
      st = health_once(ch, req_buf, req_len, left > 0 ? left : 1, true, &serving, details,
                       sizeof details);
      if (st == PX_ST_OK && serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
        break;
      now = px_now_ms();
      if (now >= deadline) break;
      sleep_ms(pause < deadline - now ? pause : deadline - now);
      pause = pause * 2 < 1000 ? pause * 2 : 1000;
    }
  }
  px_rpc_channel_destroy(ch);
  px_rpc_shutdown();
  free(req_buf);

  char line[512], nbuf[32];
  if (st != PX_ST_OK) {
    if (details[0])
      fprintf(stderr, "error: %s: %s\n", px_status_name(st), one_line(details, line, sizeof line, ' '));
    else
      fprintf(stderr, "error: %s\n", px_status_name(st));
    return 1;
  }
  printf("%s\n", serving_name(serving, nbuf, sizeof nbuf));
  if (fflush(stdout) != 0) return 1;
  return serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? 0 : 1;
}

