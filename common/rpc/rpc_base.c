/* Statuses, library start-up and messages (rpc_base.h). */
#include "rpc/rpc_base.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/slice.h>
#include <grpc/support/log.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

struct px_msg {
  grpc_byte_buffer* bb;
  grpc_byte_buffer_reader rd;
  bool rd_init;
  px_iov* seg;
  size_t nseg;
  uint8_t* flat;
};

static const char* const status_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED"};

const char* px_status_name(int status) {
  if (status < 0 || status >= (int)(sizeof status_names / sizeof status_names[0]))
    return "UNKNOWN_STATUS";
  return status_names[status];
}

/* gRPC's own messages (it prints only errors unless GRPC_VERBOSITY says otherwise). */
static void grpc_log_to_sink(gpr_log_func_args* a) {
  px_log(a->severity == GPR_LOG_SEVERITY_ERROR ? PX_LOG_WARN : PX_LOG_DEBUG, "grpc: %s",
         a->message);
}

static void route_grpc_log(void) { gpr_set_log_function(grpc_log_to_sink); }

void px_rpc_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, route_grpc_log);
  grpc_init();
}

void px_rpc_shutdown(void) { grpc_shutdown(); }

px_msg* px_rpc_msg_wrap(grpc_byte_buffer* bb) {
  if (!bb) return NULL;
  px_msg* m = calloc(1, sizeof *m);
  if (!m) {
    grpc_byte_buffer_destroy(bb);
    return NULL;
  }
  m->bb = bb;
  return m;
}

size_t px_msg_len(const px_msg* m) { return grpc_byte_buffer_length(m->bb); }

const px_iov* px_msg_segments(px_msg* m, size_t* nseg) {
  if (!m->rd_init) {
    /* The reader decompresses a compressed message into its own buffer; it lives as
     * long as the message. */
    if (!grpc_byte_buffer_reader_init(&m->rd, m->bb)) {
      *nseg = 0;
      return NULL;
    }
    m->rd_init = true;
    size_t cap = 0;
    grpc_slice* s;
    while (grpc_byte_buffer_reader_peek(&m->rd, &s)) {
      if (m->nseg == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        px_iov* n = realloc(m->seg, ncap * sizeof *n);
        if (!n) {
          *nseg = 0;
          return NULL;
        }
        m->seg = n;
        cap = ncap;
      }
      m->seg[m->nseg].p = GRPC_SLICE_START_PTR(*s);
      m->seg[m->nseg].n = GRPC_SLICE_LENGTH(*s);
      m->nseg++;
    }
  }
  *nseg = m->nseg;
  return m->seg;
}

const uint8_t* px_msg_flat(px_msg* m, size_t* len) {
  size_t n;
  const px_iov* seg = px_msg_segments(m, &n);
  if (!m->rd_init) return NULL;
  if (n == 0) {
    *len = 0;
    return (const uint8_t*)"";
  }
  if (n == 1) {
    *len = seg[0].n;
    return seg[0].p;
  }
  if (!m->flat) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += seg[i].n;
    m->flat = malloc(total ? total : 1);
    if (!m->flat) return NULL;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
      memcpy(m->flat + off, seg[i].p, seg[i].n);
      off += seg[i].n;
    }
  }
  *len = grpc_byte_buffer_length(m->bb);
  return m->flat;
}

void px_msg_free(px_msg* m) {
  if (!m) return;
  if (m->rd_init) grpc_byte_buffer_reader_destroy(&m->rd);
  grpc_byte_buffer_destroy(m->bb);
  free(m->seg);
  free(m->flat);
  free(m);
}

typedef struct release_box {
  px_release_fn fn;
  void* ctx;
} release_box;

static void release_trampoline(void* p) {
  release_box* b = p;
  b->fn(b->ctx);
  free(b);
}

void px_rpc_out_release(const px_out* out) {
  if (out && out->release) out->release(out->release_ctx);
}

grpc_byte_buffer* px_rpc_out_buffer(const px_out* out) {
  grpc_slice s[2];
  size_t n = 0;
  if (out->head_len) s[n++] = grpc_slice_from_copied_buffer(out->head, out->head_len);
  if (out->body && out->body_len) {
    if (out->release) {
      release_box* b = malloc(sizeof *b);
      if (!b) {
        for (size_t i = 0; i < n; i++) grpc_slice_unref(s[i]);
        px_rpc_out_release(out);
        return NULL;
      }
      b->fn = out->release;
      b->ctx = out->release_ctx;
      s[n++] = grpc_slice_new_with_user_data((void*)out->body, out->body_len,
                                             release_trampoline, b);
    } else {
      s[n++] = grpc_slice_from_static_buffer(out->body, out->body_len);
    }
  } else {
    px_rpc_out_release(out);
  }
  grpc_byte_buffer* bb = grpc_raw_byte_buffer_create(s, n);
  for (size_t i = 0; i < n; i++) grpc_slice_unref(s[i]);
  return bb;
}
