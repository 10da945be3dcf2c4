/* Errors and logging (errors.h, and the pmx_strerror / pmx_last_error /
 * pmx_set_log_callback of paramex.h). */
#include "errors.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "rpc/rpc_base.h"
#include "util/log.h"

static _Thread_local char tl_error[PX_ERROR_LEN];

pmx_status px_fail(pmx_status st, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tl_error, sizeof tl_error, fmt, ap);
  va_end(ap);
  return st;
}

char* px_last_error_buf(void) { return tl_error; }

const char* pmx_last_error(void) { return tl_error; }

pmx_status px_from_rpc(int st) {
  return st >= 0 && st <= PX_ST_UNAUTHENTICATED ? (pmx_status)st : PMX_ERR_UNKNOWN;
}

const char* pmx_strerror(pmx_status s) {
  switch (s) {
    case PMX_OK: return "ok";
    case PMX_ERR_CANCELLED: return "cancelled";
    case PMX_ERR_UNKNOWN: return "unknown error";
    case PMX_ERR_INVALID_ARGUMENT: return "invalid argument";
    case PMX_ERR_DEADLINE_EXCEEDED: return "deadline exceeded";
    case PMX_ERR_NOT_FOUND: return "not found";
    case PMX_ERR_ALREADY_EXISTS: return "already exists";
    case PMX_ERR_PERMISSION_DENIED: return "permission denied";
    case PMX_ERR_RESOURCE_EXHAUSTED: return "resource exhausted";
    case PMX_ERR_FAILED_PRECONDITION: return "failed precondition";
    case PMX_ERR_ABORTED: return "aborted";
    case PMX_ERR_OUT_OF_RANGE: return "out of range";
    case PMX_ERR_UNIMPLEMENTED: return "unimplemented";
    case PMX_ERR_INTERNAL: return "internal error";
    case PMX_ERR_UNAVAILABLE: return "server unavailable";
    case PMX_ERR_DATA_LOSS: return "data loss (checksum mismatch)";
    case PMX_ERR_UNAUTHENTICATED: return "unauthenticated";
    case PMX_ERR_NO_MEMORY: return "out of memory";
    case PMX_ERR_PROTOCOL: return "protocol error";
  }
  return "unknown status";
}

/* ---- the application's log callback ------------------------------------------------------ */

_Static_assert((int)PMX_LOG_ERROR == (int)PX_LOG_ERROR && (int)PMX_LOG_WARN == (int)PX_LOG_WARN &&
                   (int)PMX_LOG_INFO == (int)PX_LOG_INFO && (int)PMX_LOG_DEBUG == (int)PX_LOG_DEBUG,
               "public and internal log levels are the same numbers");

/* Read only inside the log mutex of util/log.c (the sink runs under it). */
static pmx_log_fn g_fn;
static void* g_ctx;

static void to_app(void* ctx, px_log_level level, const char* msg) {
  (void)ctx;
  if (g_fn) g_fn(g_ctx, (pmx_log_level)level, msg);
}

void pmx_set_log_callback(pmx_log_fn fn, void* ctx, pmx_log_level max_level) {
  /* drop the old sink first so that no message reaches fn with the old ctx */
  px_log_set_sink(NULL, NULL, PX_LOG_ERROR);
  g_fn = fn;
  g_ctx = ctx;
  if (fn) {
    int lvl = (int)max_level < 0 ? 0 : (int)max_level > 3 ? 3 : (int)max_level;
    px_log_set_sink(to_app, NULL, (px_log_level)lvl);
  }
}
