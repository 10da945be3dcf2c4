/* The Prometheus text exposition format 0.0.4, written into a growing buffer: families
 * (# HELP, # TYPE), samples with escaped label values, histograms from a px_hist
 * snapshot. Every sample carries the writer's constant labels first (e.g. shard="0").
 * Allocation failures are remembered (px_prom.failed) and end the output: the caller
 * answers an error instead of a truncated page. */
#ifndef PX_PROM_H
#define PX_PROM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"

typedef struct px_prom {
  char* buf;
  size_t len, cap;
  bool failed;
  char constant[128]; /* 'shard="0"' or "" */
} px_prom;

/* constant: name and value of the label every sample carries (name NULL: none). */
void px_prom_init(px_prom* p, const char* label, const char* value);
void px_prom_free(px_prom* p);
/* Takes the text (NUL-terminated, *len bytes) out of p; NULL when writing failed. */
char* px_prom_take(px_prom* p, size_t* len);

/* A family's "# HELP name help" and "# TYPE name type" (type: counter, gauge, histogram). */
void px_prom_family(px_prom* p, const char* name, const char* type, const char* help);
/* name{constant,k1="v1",...} value: the variadic part is label names and values, in
 * pairs, ended by NULL. Values are escaped (backslash, quote, newline). Prometheus keeps
 * float64: integral values print as integers (exact up to 2^53). */
void px_prom_sample(px_prom* p, const char* name, double v, ...);
/* name_bucket{le=...}, name_sum and name_count of a histogram snapshot (no labels but the
 * constant one). */
void px_prom_hist(px_prom* p, const char* name, const px_hist_snap* s);

/* family + one unlabelled sample: the common case. */
void px_prom_counter(px_prom* p, const char* name, const char* help, uint64_t v);
void px_prom_gauge(px_prom* p, const char* name, const char* help, double v);

#endif
