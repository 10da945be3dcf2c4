/* Logging (log.h). */
#include "util/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/str.h"

int px_log_threshold = PX_LOG_INFO;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static px_log_sink g_sink; /* under g_mu */
static void* g_ctx;

static const char* const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

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

int px_log_level_parse(const char* s) {
  if (!s) return -1;
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  return -1;
}

void px_log_stderr(void* ctx, px_log_level level, const char* msg) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char stamp[32];
  size_t k = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + k, sizeof stamp - k, ".%03dZ", (int)(ts.tv_nsec / 1000000));
  /* one call per line */
  fprintf(stderr, "%s [%s] %s %s\n", stamp, ctx ? (const char*)ctx : "paramex",
          px_log_level_name(level), msg);
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
