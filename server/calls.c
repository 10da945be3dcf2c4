/* Answers (calls.h). */
#include "calls.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

void px_reply(px_srv_call* call, const ProtobufCMessage* m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t stackbuf[512];
  uint8_t* buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
  if (!buf) {
    px_srv_call_finish(call, NULL, PX_ST_RESOURCE_EXHAUSTED, "out of memory for the reply");
    return;
  }
  protobuf_c_message_pack(m, buf);
  px_out out = {buf, n, NULL, 0, NULL, NULL};
  px_srv_call_finish(call, &out, PX_ST_OK, NULL);
  if (buf != stackbuf) free(buf);
}

void px_reject(px_counters* ctr, px_srv_call* call, int status, const char* msg) {
  atomic_fetch_add(&ctr->rejected_calls, 1);
  px_debug("rejected call: %s: %s", px_status_name(status), msg);
  px_srv_call_finish(call, NULL, status, msg);
}

bool px_refuse_stale_server(px_counters* ctr, px_store* store, const char* server_id,
                            px_srv_call* call) {
  char id[96];
  const char* h = px_srv_call_header(call, "pmx-server-id", id, sizeof id);
  if (!h || strcmp(h, server_id) == 0) return false;
  char msg[256];
  snprintf(msg, sizeof msg,
           "server restarted (was %.40s, now %s) with its tensors at version %" PRIu64 ": join "
           "again and resume from there", h, server_id, px_store_version_min(store, NULL));
  px_reject(ctr, call, PX_ST_ABORTED, msg);
  return true;
}

void* px_data_call_new(px_counters* ctr, px_store* store, px_waiters* waiters,
                       const char* server_id, px_srv_call* call, size_t size) {
  if (px_waiters_draining(waiters)) {
    px_reject(ctr, call, PX_ST_UNAVAILABLE, "server is shutting down");
    return NULL;
  }
  if (px_refuse_stale_server(ctr, store, server_id, call)) return NULL;
  void* ctx = calloc(1, size);
  if (!ctx) px_reject(ctr, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory");
  return ctx;
}
