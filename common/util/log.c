/* Clocks and logging (util.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/util.h"

uint64_t px_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t px_now_ms(void) { return px_now_ns() / 1000000u; }

int px_log_threshold = PX_LOG_INFO;

/* Written once by px_log_init before threads start, read by every log call. */
static char log_role[32] = "paramex";

static const char* const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void px_log_init(const char* role, px_log_level threshold) {
  px_strlcpy(log_role, role ? role : "paramex", sizeof log_role);
  px_log_threshold = (int)threshold;
}

int px_log_level_parse(const char* s) {
  if (!s) return -1;
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  return -1;
}

void px_log_write(px_log_level level, const char* fmt, ...) {
  if ((int)level > px_log_threshold) return;
  const char* lname = ((unsigned)level < 4) ? level_names[level] : "?";

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char stamp[32];
  size_t k = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + k, sizeof stamp - k, ".%03dZ", (int)(ts.tv_nsec / 1000000));

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

  /* One call per line so that lines of concurrent threads never interleave. */
  fprintf(stderr, "%s [%s] %s %s\n", stamp, log_role, lname, msg);
}

void px_deadline_ts(struct timespec* ts, int clock, int64_t ms) {
  clock_gettime((clockid_t)clock, ts);
  ts->tv_sec += (time_t)(ms / 1000);
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}
