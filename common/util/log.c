/* Logging (log.h). */
#include "util/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/str.h"

int px_log_threshold = PX_LOG_INFO;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static px_log_sink g_sink; /* under g_mu */
static void* g_ctx;

static _Atomic int64_t g_shard = -1; /* px_log_json's "shard" (negative: none) */

static const char* const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char* const level_lower[] = {"error", "warn", "info", "debug"};

const char* px_log_level_name(int level) {
  return level >= 0 && level < 4 ? level_names[level] : "?";
}

void px_log_set_sink(px_log_sink fn, void* ctx, px_log_level threshold) {
  pthread_mutex_lock(&g_mu);
  g_sink = fn;
  g_ctx = ctx;
  px_log_threshold = (int)threshold;
  pthread_mutex_unlock(&g_mu);
}

void px_log_init(const char* role, px_log_level threshold) {
  px_log_set_sink(px_log_stderr, (void*)role, threshold);
}

void px_log_init_format(const char* role, px_log_level threshold, px_log_format format) {
  px_log_set_sink(format == PX_LOG_JSON ? px_log_json : px_log_stderr, (void*)role, threshold);
}

int px_log_format_parse(const char* s) {
  if (s && strcasecmp(s, "text") == 0) return PX_LOG_TEXT;
  if (s && strcasecmp(s, "json") == 0) return PX_LOG_JSON;
  return -1;
}

void px_log_set_shard(int64_t shard) { atomic_store(&g_shard, shard < 0 ? -1 : shard); }

int px_log_level_parse(const char* s) {
  if (!s) return -1;
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  return -1;
}

/* "2026-11-25T12:00:00.123Z" (RFC 3339, UTC, milliseconds) into stamp[32]. */
static void stamp_now(char* stamp, size_t cap) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t k = strftime(stamp, cap, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + k, cap - k, ".%03dZ", (int)(ts.tv_nsec / 1000000));
}

void px_log_stderr(void* ctx, px_log_level level, const char* msg) {
  char stamp[32];
  stamp_now(stamp, sizeof stamp);
  /* one call per line */
  fprintf(stderr, "%s [%s] %s %s\n", stamp, ctx ? (const char*)ctx : "paramex",
          px_log_level_name(level), msg);
}

/* Appends s as a JSON string (quotes included) to buf[*n..cap); when it does not fit,
 * as much as fits before `..."` (cap must leave room for those 4 bytes). */
static void json_append(char* buf, size_t* n, size_t cap, const char* s) {
  const unsigned char* p = (const unsigned char*)s;
  size_t left = strlen(s), k = *n;
  buf[k++] = '"';
  while (left) {
    char esc[6];
    size_t used, len = px_json_char(p, left, esc, &used);
    if (k + len + 4 > cap) {
      memcpy(buf + k, "...", 3);
      k += 3;
      break;
    }
    memcpy(buf + k, esc, len);
    k += len;
    p += used;
    left -= used;
  }
  buf[k++] = '"';
  *n = k;
}

void px_log_json(void* ctx, px_log_level level, const char* msg) {
  char line[8192], stamp[32], head[160];
  stamp_now(stamp, sizeof stamp);
  int64_t shard = atomic_load(&g_shard);
  /* the fixed fields first; the role is escaped like the event (a string of the caller) */
  int k = snprintf(line, sizeof line, "{\"time\":\"%s\",\"level\":\"%s\",\"role\":", stamp,
                   (int)level >= 0 && (int)level < 4 ? level_lower[level] : "?");
  size_t n = (size_t)k;
  px_strlcpy(head, ctx ? (const char*)ctx : "paramex", sizeof head);
  json_append(line, &n, 512, head);
  if (shard >= 0) n += (size_t)snprintf(line + n, sizeof line - n, ",\"shard\":%lld", (long long)shard);
  memcpy(line + n, ",\"event\":", 9);
  n += 9;
  json_append(line, &n, sizeof line - 3, msg ? msg : "");
  line[n++] = '}';
  line[n++] = '\n';
  fwrite(line, 1, n, stderr); /* one call per line (stderr is unbuffered) */
}

void px_log_write(px_log_level level, const char* fmt, ...) {
  if ((int)level > px_log_threshold) return;
  /* Format into a bounded stack buffer (no allocation on the logging path); a longer
   * message is cut and marked with "...". */
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) {
    px_strlcpy(msg, "(bad log format)", sizeof msg);
    n = (int)strlen(msg);
  } else if ((size_t)n >= sizeof msg) {
    memcpy(msg + sizeof msg - 4, "...", 4);
    n = (int)sizeof msg - 1;
  }
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
  pthread_mutex_lock(&g_mu);
  if (g_sink) g_sink(g_ctx, level, msg);
  pthread_mutex_unlock(&g_mu);
}
