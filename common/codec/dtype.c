/* Element types and the f32 <-> bf16 / f16 conversions (dtype.h).
 *
 * The scalar converters are branch free (every case is computed, then selected with
 * masks) so that gcc -O2 can vectorise the _n loops with SSE2. gcc 12's -O2 cost model
 * ("very cheap") only vectorises a loop whose trip count is a known multiple of the
 * vector length, hence each loop runs over a multiple of BLK elements and a scalar tail
 * finishes the rest. */
#include "codec/dtype.h"

#include <string.h>
#include <strings.h>

/* The one table of element types: names are lower case ("f32"); safetensors spells them
 * in upper case ("F32"). */
static const struct {
  int dtype;
  const char* name;
  size_t size;
} dtypes[] = {
    {PX_DT_F32, "f32", 4},      {PX_DT_BF16, "bf16", 2},   {PX_DT_F16, "f16", 2},
    {PX_DT_F64, "f64", 8},      {PX_DT_I64, "i64", 8},     {PX_DT_I32, "i32", 4},
    {PX_DT_I16, "i16", 2},      {PX_DT_I8, "i8", 1},       {PX_DT_U64, "u64", 8},
    {PX_DT_U32, "u32", 4},      {PX_DT_U16, "u16", 2},     {PX_DT_U8, "u8", 1},
    {PX_DT_BOOL, "bool", 1},    {PX_DT_F8_E5M2, "f8_e5m2", 1},
    {PX_DT_F8_E4M3, "f8_e4m3", 1},
};
#define NDTYPES (sizeof dtypes / sizeof dtypes[0])

size_t px_dtype_size(int dtype) {
  return dtype == PX_DT_F32 || dtype == PX_DT_BF16 || dtype == PX_DT_F16 ? px_dtype_size_any(dtype)
                                                                          : 0;
}

size_t px_dtype_size_any(int dtype) {
  for (size_t i = 0; i < NDTYPES; i++)
    if (dtypes[i].dtype == dtype) return dtypes[i].size;
  return 0;
}

const char* px_dtype_name(int dtype) {
  for (size_t i = 0; i < NDTYPES; i++)
    if (dtypes[i].dtype == dtype) return dtypes[i].name;
  return "?";
}

int px_dtype_parse(const char* name) {
  for (size_t i = 0; name && i < NDTYPES; i++)
    if (strcasecmp(dtypes[i].name, name) == 0) return dtypes[i].dtype;
  return 0;
}

#define BLK 32

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* all ones if c, else 0 */
static inline uint32_t mask_if(int c) { return 0u - (uint32_t)(c != 0); }

static inline uint16_t cvt_f32_bf16(float f) {
  uint32_t u = f32_bits(f);
  /* RNE on the 16 dropped bits; a carry into the exponent gives the next binade or inf */
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t quiet_nan = (u >> 16) | 0x0040u;
  uint32_t is_nan = mask_if((u & 0x7fffffffu) > 0x7f800000u);
  return (uint16_t)((quiet_nan & is_nan) | (rounded & ~is_nan));
}

static inline float cvt_bf16_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static inline uint16_t cvt_f32_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  /* |f| < 2^-14: f16 subnormal or zero. Adding 0.5 puts the f16 quantum 2^-24 at the
   * f32 ulp of 0.5, so the FPU's round-to-nearest-even does the rounding; a carry to
   * 1024 is the smallest normal, which is the right pattern. Only small finite values
   * reach the addition (others are masked to 0), so it raises no flag but inexact. */
  uint32_t small = mask_if(a < (113u << 23));
  uint32_t sub = f32_bits(bits_f32(a & small) + 0.5f) - 0x3f000000u;
  /* normal: rebias the exponent 127 -> 15 and round the 13 dropped bits to even; a
   * carry out of 0x7bff gives 0x7c00 = inf (|f| >= 65520) */
  uint32_t nrm = (a - (112u << 23) + 0x0fffu + ((a >> 13) & 1u)) >> 13;
  uint32_t big = mask_if(a >= (143u << 23)); /* >= 65536 or inf */
  uint32_t nan = mask_if(a > 0x7f800000u);
  uint32_t r = (sub & small) | (nrm & ~small);
  r = (0x7c00u & big) | (r & ~big);
  r = ((0x7e00u | ((a >> 13) & 0x03ffu)) & nan) | (r & ~nan);
  return (uint16_t)(r | sign);
}

static inline float cvt_f16_f32(uint16_t h) {
  uint32_t a = (uint32_t)(h & 0x7fffu) << 13; /* exponent and mantissa at f32 positions */
  uint32_t exp = a & (0x1fu << 23);
  uint32_t is_special = mask_if(exp == (0x1fu << 23)); /* inf, NaN: exponent 255 */
  uint32_t is_small = mask_if(exp == 0);                /* zero, subnormal */
  uint32_t nrm = a + (112u << 23) + (((255u - 31u - 112u) << 23) & is_special);
  /* subnormal m * 2^-24: build 2^-14 * (1 + m/1024) = 2^-14 + m * 2^-24 and subtract
   * 2^-14; exact. */
  uint32_t sub = f32_bits(bits_f32(a + (113u << 23)) - bits_f32(113u << 23));
  uint32_t r = (sub & is_small) | (nrm & ~is_small);
  return bits_f32(r | (uint32_t)(h & 0x8000u) << 16);
}

uint16_t px_f32_to_bf16(float f) { return cvt_f32_bf16(f); }
float px_bf16_to_f32(uint16_t h) { return cvt_bf16_f32(h); }
uint16_t px_f32_to_f16(float f) { return cvt_f32_f16(f); }
float px_f16_to_f32(uint16_t h) { return cvt_f16_f32(h); }

/* The two loops of each function are identical: the first has a trip count that is a
 * multiple of BLK (vectorised), the second is the scalar tail. */
#define CONVERT_LOOP(cvt)                                  \
  do {                                                     \
    size_t m_ = n & ~(size_t)(BLK - 1), i_;                \
    for (i_ = 0; i_ < m_; i_++) dst[i_] = cvt(src[i_]);    \
    for (; i_ < n; i_++) dst[i_] = cvt(src[i_]);           \
  } while (0)

static void f32_to_bf16_n(const float* restrict src, uint16_t* restrict dst, size_t n) {
  CONVERT_LOOP(cvt_f32_bf16);
}
static void bf16_to_f32_n(const uint16_t* restrict src, float* restrict dst, size_t n) {
  CONVERT_LOOP(cvt_bf16_f32);
}
static void f32_to_f16_n(const float* restrict src, uint16_t* restrict dst, size_t n) {
  CONVERT_LOOP(cvt_f32_f16);
}
static void f16_to_f32_n(const uint16_t* restrict src, float* restrict dst, size_t n) {
  CONVERT_LOOP(cvt_f16_f32);
}

void px_f32_to_bf16_n(const float* src, uint16_t* dst, size_t n) { f32_to_bf16_n(src, dst, n); }
void px_bf16_to_f32_n(const uint16_t* src, float* dst, size_t n) { bf16_to_f32_n(src, dst, n); }
void px_f32_to_f16_n(const float* src, uint16_t* dst, size_t n) { f32_to_f16_n(src, dst, n); }
void px_f16_to_f32_n(const uint16_t* src, float* dst, size_t n) { f16_to_f32_n(src, dst, n); }
