/* Prometheus text format writer (prom.h). */
#include "prom.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reserve(px_prom* p, size_t more) {
  if (p->failed) return false;
  if (p->len + more + 1 <= p->cap) return true;
  size_t cap = p->cap ? p->cap : 16384;
  while (cap < p->len + more + 1) cap *= 2;
  char* b = realloc(p->buf, cap);
  if (!b) {
    p->failed = true;
    return false;
  }
  p->buf = b;
  p->cap = cap;
  return true;
}

static void put(px_prom* p, const char* s, size_t n) {
  if (!reserve(p, n)) return;
  memcpy(p->buf + p->len, s, n);
  p->len += n;
  p->buf[p->len] = 0;
}

static void puts_(px_prom* p, const char* s) { put(p, s, strlen(s)); }

/* s with backslash and newline escaped, and the quote too when quote is set. */
static void put_escaped(px_prom* p, const char* s, bool quote) {
  for (; *s; s++) {
    if (*s == '\\') puts_(p, "\\\\");
    else if (*s == '\n') puts_(p, "\\n");
    else if (*s == '"' && quote) puts_(p, "\\\"");
    else put(p, s, 1);
  }
}

void px_prom_init(px_prom* p, const char* label, const char* value) {
  memset(p, 0, sizeof *p);
  if (label) snprintf(p->constant, sizeof p->constant, "%s=\"%s\"", label, value);
}

void px_prom_free(px_prom* p) {
  free(p->buf);
  memset(p, 0, sizeof *p);
}

char* px_prom_take(px_prom* p, size_t* len) {
  if (p->failed || !reserve(p, 0)) {
    px_prom_free(p);
    return NULL;
  }
  char* b = p->buf;
  *len = p->len;
  p->buf = NULL;
  p->len = p->cap = 0;
  return b;
}

void px_prom_family(px_prom* p, const char* name, const char* type, const char* help) {
  puts_(p, "# HELP ");
  puts_(p, name);
  puts_(p, " ");
  put_escaped(p, help, false);
  puts_(p, "\n# TYPE ");
  puts_(p, name);
  puts_(p, " ");
  puts_(p, type);
  puts_(p, "\n");
}

/* name{constant, labels of ap}; the caller writes " value\n". */
static void head(px_prom* p, const char* name, const char* extra_name, const char* extra_value,
                 va_list ap) {
  puts_(p, name);
  bool any = p->constant[0] != 0;
  if (any) {
    puts_(p, "{");
    puts_(p, p->constant);
  }
  for (const char* k; (k = va_arg(ap, const char*)) != NULL;) {
    const char* v = va_arg(ap, const char*);
    puts_(p, any ? "," : "{");
    any = true;
    puts_(p, k);
    puts_(p, "=\"");
    put_escaped(p, v ? v : "", true);
    puts_(p, "\"");
  }
  if (extra_name) {
    puts_(p, any ? "," : "{");
    any = true;
    puts_(p, extra_name);
    puts_(p, "=\"");
    puts_(p, extra_value);
    puts_(p, "\"");
  }
  if (any) puts_(p, "}");
}

/* Prometheus keeps float64: integral values (counters) print as integers, exactly up to
 * 2^53, others with 15 significant digits. */
static void value(px_prom* p, double v) {
  char num[48];
  if (isnan(v)) snprintf(num, sizeof num, " NaN\n");
  else if (isinf(v)) snprintf(num, sizeof num, " %sInf\n", v > 0 ? "+" : "-");
  else if (v == floor(v) && fabs(v) < 9.2e18) snprintf(num, sizeof num, " %.0f\n", v);
  else snprintf(num, sizeof num, " %.15g\n", v);
  puts_(p, num);
}

void px_prom_sample(px_prom* p, const char* name, double v, ...) {
  va_list ap;
  va_start(ap, v);
  head(p, name, NULL, NULL, ap);
  va_end(ap);
  value(p, v);
}

/* A sample with only the constant label and one more (le): no variadic labels. */
static void head_le(px_prom* p, const char* name, const char* le, ...) {
  va_list ap;
  va_start(ap, le);
  head(p, name, le ? "le" : NULL, le, ap);
  va_end(ap);
}

void px_prom_hist(px_prom* p, const char* name, const px_hist_snap* s) {
  char metric[160], le[40];
  snprintf(metric, sizeof metric, "%s_bucket", name);
  for (size_t i = 0; i <= s->n; i++) {
    if (i < s->n) snprintf(le, sizeof le, "%.9g", s->le[i]);
    else snprintf(le, sizeof le, "+Inf");
    head_le(p, metric, le, NULL);
    value(p, (double)s->cum[i]);
  }
  snprintf(metric, sizeof metric, "%s_sum", name);
  head_le(p, metric, NULL, NULL);
  value(p, s->sum);
  snprintf(metric, sizeof metric, "%s_count", name);
  head_le(p, metric, NULL, NULL);
  value(p, (double)s->cum[s->n]);
}

void px_prom_counter(px_prom* p, const char* name, const char* help, uint64_t v) {
  px_prom_family(p, name, "counter", help);
  px_prom_sample(p, name, (double)v, NULL);
}

void px_prom_gauge(px_prom* p, const char* name, const char* help, double v) {
  px_prom_family(p, name, "gauge", help);
  px_prom_sample(p, name, v, NULL);
}
