/* Element types: their identities, sizes and names, and the conversions between f32 and
 * the 16-bit formats. The one table of element types in paramex (safetensors files use
 * it too).
 *
 * Rules for every function here:
 * - Pure functions on caller memory: nothing is allocated, retained or freed. No global
 *   mutable state. Thread-safe as long as no other thread writes the buffers a call reads
 *   or reads/writes the buffers it writes.
 * - n counts elements (words), not bytes, unless it says bytes. n == 0 is a no-op and the
 *   pointers may then be NULL.
 * - Buffers must not overlap unless a function says otherwise.
 * - The float and uint16_t arrays need their type's natural alignment. */
#ifndef PX_DTYPE_H
#define PX_DTYPE_H

#include <stddef.h>
#include <stdint.h>

/* Parameter types (values equal the wire enum paramex.v1.DType), then element types that
 * only files carry (raw optimizer state, tensors of other writers). Values are pinned. */
enum {
  PX_DT_F32 = 1,
  PX_DT_BF16 = 2,
  PX_DT_F16 = 3,
  PX_DT_F64 = 16,
  PX_DT_I64 = 17,
  PX_DT_I32 = 18,
  PX_DT_I16 = 19,
  PX_DT_I8 = 20,
  PX_DT_U64 = 21,
  PX_DT_U32 = 22,
  PX_DT_U16 = 23,
  PX_DT_U8 = 24,
  PX_DT_BOOL = 25,
  PX_DT_F8_E5M2 = 26,
  PX_DT_F8_E4M3 = 27,
};
/* Bytes per element of a parameter type (f32, bf16, f16); 0 for any other value. */
size_t px_dtype_size(int dtype);
/* Bytes per element of any type above; 0 when unknown. */
size_t px_dtype_size_any(int dtype);
/* "f32", "bf16", "f16", "f64", "u8", ..., "?" when unknown. */
const char* px_dtype_name(int dtype);
/* The type named name, in any case ("f32", "F32", "u64"); 0 when unknown. */
int px_dtype_parse(const char* name);

/* ---- conversions ---------------------------------------------------------------------
 * bf16 is the upper 16 bits of an f32; f16 is IEEE 754 binary16.
 *
 * To 16 bits (px_f32_to_bf16, px_f32_to_f16): round to nearest, ties to even, in every
 * case (including f16 subnormal results, which are exact when representable); finite
 * values too large round to +-inf (f16: |x| >= 65520; bf16: |x| >= 0x1.ffp127);
 * +-inf stays +-inf; +-0 keeps its sign; values too small round to +-0.
 * NaN stays NaN with its sign and is QUIETED: the top mantissa bit is set (bf16 0x0040,
 * f16 0x0200) and the top payload bits are kept (bf16: mantissa bits 22..16 of the f32,
 * f16: bits 22..13). So a signalling NaN comes back as the matching quiet NaN and every
 * NaN result is a NaN, never inf.
 * The f16 rounding uses the floating-point environment's rounding mode for subnormal
 * results; it must be the default round-to-nearest (paramex never changes it). It may
 * raise the FE_INEXACT flag, never any other flag, so it is safe with FP traps enabled.
 *
 * To f32 (px_bf16_to_f32, px_f16_to_f32): exact, every 16-bit pattern maps to the
 * f32 with the same value; NaNs keep sign and payload bit for bit and are NOT quieted
 * (bf16 -> f32 is exactly `h << 16`), so the widening is injective.
 * Round trip: to_f32 then back to 16 bits returns the same pattern for every non-NaN and
 * every quiet NaN; a signalling NaN h comes back as h | quiet bit.
 *
 * The _n forms convert n elements, src[i] -> dst[i], with results identical to the
 * scalar forms; src and dst must not overlap. Vectorised by the compiler (SSE2). */
uint16_t px_f32_to_bf16(float f);
float px_bf16_to_f32(uint16_t h);
uint16_t px_f32_to_f16(float f);
float px_f16_to_f32(uint16_t h);
void px_f32_to_bf16_n(const float* src, uint16_t* dst, size_t n);
void px_bf16_to_f32_n(const uint16_t* src, float* dst, size_t n);
void px_f32_to_f16_n(const float* src, uint16_t* dst, size_t n);
void px_f16_to_f32_n(const uint16_t* src, float* dst, size_t n);


#endif
