/* Logging through one sink. Library code never writes to stderr itself: every message goes
 * to the sink installed with px_log_set_sink (by default none: messages are dropped), so
 * an application embedding libparamex decides where they go (pmx_set_log_callback), and
 * paramex-server and the tools install px_log_stderr (text) or px_log_json (--log-format).
 *
 * The level is checked before the message is formatted. Thread-safe: messages are
 * formatted into a bounded stack buffer (no allocation) and delivered to the sink one at a
 * time (under a mutex), so lines of concurrent threads never interleave. */
#ifndef PX_LOG_H
#define PX_LOG_H

#include <stdint.h>

/* Values are pinned: the public PMX_LOG_* constants of paramex.h equal them. */
typedef enum { PX_LOG_ERROR = 0, PX_LOG_WARN = 1, PX_LOG_INFO = 2, PX_LOG_DEBUG = 3 } px_log_level;

/* Receives one message (no trailing newline) of level; msg is valid during the call only.
 * Called with the logging mutex held: it must not log itself. */
typedef void (*px_log_sink)(void* ctx, px_log_level level, const char* msg);

/* Messages with level > px_log_threshold are dropped before formatting (default INFO). */
extern int px_log_threshold;

/* Installs fn (NULL: drop everything) with its ctx, and the threshold. Safe at any time:
 * a message being delivered finishes on the old sink. */
void px_log_set_sink(px_log_sink fn, void* ctx, px_log_level threshold);
/* A sink writing "2026-11-25T12:00:00.123Z [ROLE] LEVEL message" lines on stderr; ctx is
 * the role (a string that outlives the sink, e.g. "server"). */
void px_log_stderr(void* ctx, px_log_level level, const char* msg);
/* A sink writing one JSON object per line on stderr, e.g.
 *   {"time":"2026-11-25T12:00:00.123Z","level":"info","role":"server","shard":0,"event":"..."}
 * ctx is the role as for px_log_stderr; "shard" is there once px_log_set_shard gave one.
 * The line is always valid JSON: quotes, backslashes and control characters are escaped
 * and bytes that are not UTF-8 become U+FFFD, since messages quote untrusted strings.
 * Escaped by hand into a bounded stack buffer (jansson would allocate a json_t per line,
 * breaking the no-allocation promise above); an event whose escaped form does not fit
 * in about 8 KiB is cut at a character boundary and ends in "...". One write per line. */
void px_log_json(void* ctx, px_log_level level, const char* msg);
/* The shard number px_log_json puts in its lines (negative: none, the default). Safe at
 * any time. */
void px_log_set_shard(int64_t shard);

/* How lines are written on stderr: px_log_stderr's text or px_log_json's JSON. */
typedef enum { PX_LOG_TEXT = 0, PX_LOG_JSON = 1 } px_log_format;
/* Parses "text" or "json" (any case); -1 when unknown. */
int px_log_format_parse(const char* s);

/* What programs (paramex-server, the tools) call at start: the px_log_stderr sink with
 * role (a string that outlives the sink). */
void px_log_init(const char* role, px_log_level threshold);
/* The same with the sink of format: px_log_stderr or px_log_json. */
void px_log_init_format(const char* role, px_log_level threshold, px_log_format format);
/* Parses "error", "warn", "info", "debug" (any case); -1 when unknown. */
int px_log_level_parse(const char* s);
/* "ERROR", "WARN", "INFO", "DEBUG", "?" */
const char* px_log_level_name(int level);

void px_log_write(px_log_level level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
#define px_log(level, ...)                                                   \
  do {                                                                       \
    if ((int)(level) <= px_log_threshold) px_log_write((level), __VA_ARGS__); \
  } while (0)
#define px_error(...) px_log(PX_LOG_ERROR, __VA_ARGS__)
#define px_warn(...) px_log(PX_LOG_WARN, __VA_ARGS__)
#define px_info(...) px_log(PX_LOG_INFO, __VA_ARGS__)
#define px_debug(...) px_log(PX_LOG_DEBUG, __VA_ARGS__)

#endif
