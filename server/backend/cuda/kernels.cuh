/* The device arithmetic and kernels of the cuda backend, shared by gpu.cu and the kernel
 * benchmark (kernel_bench.cu). Identical, operation for operation, to
 * common/codec/dtype.c and server/backend/optimizer.c. */
#ifndef PX_KERNELS_CUH
#define PX_KERNELS_CUH

#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "codec/dtype.h"
}

#define THREADS 256

static __device__ __forceinline__ uint32_t mask_if(bool c) { return 0u - (uint32_t)c; }

static __device__ __forceinline__ uint16_t d_f32_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t quiet_nan = (u >> 16) | 0x0040u;
  uint32_t is_nan = mask_if((u & 0x7fffffffu) > 0x7f800000u);
  return (uint16_t)((quiet_nan & is_nan) | (rounded & ~is_nan));
}

static __device__ __forceinline__ uint16_t d_f32_to_f16(float f) {
  uint32_t u = __float_as_uint(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  uint32_t small = mask_if(a < (113u << 23));
  uint32_t sub = __float_as_uint(__fadd_rn(__uint_as_float(a & small), 0.5f)) - 0x3f000000u;
  uint32_t nrm = (a - (112u << 23) + 0x0fffu + ((a >> 13) & 1u)) >> 13;
  uint32_t big = mask_if(a >= (143u << 23));
  uint32_t nan = mask_if(a > 0x7f800000u);
  uint32_t r = (sub & small) | (nrm & ~small);
  r = (0x7c00u & big) | (r & ~big);
  r = ((0x7e00u | ((a >> 13) & 0x03ffu)) & nan) | (r & ~nan);
  return (uint16_t)(r | sign);
}

static __device__ __forceinline__ float d_f16_to_f32(uint16_t h) {
  uint32_t a = (uint32_t)(h & 0x7fffu) << 13;
  uint32_t exp = a & (0x1fu << 23);
  uint32_t is_special = mask_if(exp == (0x1fu << 23));
  uint32_t is_small = mask_if(exp == 0);
  uint32_t nrm = a + (112u << 23) + (((255u - 31u - 112u) << 23) & is_special);
  uint32_t sub = __float_as_uint(
      __fsub_rn(__uint_as_float(a + (113u << 23)), __uint_as_float(113u << 23)));
  uint32_t r = (sub & is_small) | (nrm & ~is_small);
  return __uint_as_float(r | (uint32_t)(h & 0x8000u) << 16);
}

static __device__ __forceinline__ uint32_t zz32(uint32_t w) { return (w << 1) ^ (0u - (w >> 31)); }
static __device__ __forceinline__ uint32_t zz16(uint32_t w16) {
  return ((w16 << 1) ^ (0u - ((w16 >> 15) & 1u))) & 0xffffu;
}

#define GRID_STRIDE(i, n)                                                         \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);         \
       i += (size_t)gridDim.x * blockDim.x)

/* acc[i] += x[i]: the cpu backend's `acc[i] += g[i]`. */
static __global__ void k_add(float* __restrict__ acc, const float* __restrict__ x, size_t n) {
  GRID_STRIDE(i, n) acc[i] = __fadd_rn(acc[i], x[i]);
}

struct step_k {
  float lr, mu, wd, nw;
  int first;
  int nest; /* Nesterov momentum */
  int kind;  /* px_opt_kind: 0 sgd, 1 adagrad, 2 rmsprop */
  float eps, alpha, om; /* om = 1 - alpha, rounded once (as optimizer.c) */
  size_t n;
};

/* One SGD step (px_sgd_apply, through f32 for 16-bit parameters) fused with the outputs
 * the frames need: the encoder input of the native words (enc0), and for f32 the bf16
 * view (bits1) and its encoder input (enc1). Byte plane b of an encoder input holds byte
 * b of every zigzagged word delta (px_zigzag_shuffle). */
template <int DT>
static __global__ void k_step(void* __restrict__ params, float* __restrict__ mom,
                       const float* __restrict__ sum, step_k a, uint8_t* __restrict__ enc0,
                       uint16_t* __restrict__ bits1, uint8_t* __restrict__ enc1) {
  const size_t n = a.n;
  GRID_STRIDE(i, n) {
    uint32_t ob;
    float p;
    if (DT == PX_DT_F32) {
      ob = ((const uint32_t*)params)[i];
      p = __uint_as_float(ob);
    } else {
      ob = ((const uint16_t*)params)[i];
      p = DT == PX_DT_BF16 ? __uint_as_float(ob << 16) : d_f16_to_f32((uint16_t)ob);
    }
    float g = __fdiv_rn(sum[i], a.nw);
    float q;
    if (a.kind != 0) { /* adagrad (1), rmsprop (2): optimizer.h's order of operations */
      if (a.wd != 0.0f) g = __fadd_rn(g, __fmul_rn(a.wd, p));
      const float gg = __fmul_rn(g, g);
      const float nv = a.kind == 2 ? (a.first ? __fmul_rn(a.om, gg)
                                              : __fadd_rn(__fmul_rn(a.alpha, mom[i]),
                                                          __fmul_rn(a.om, gg)))
                                   : (a.first ? gg : __fadd_rn(mom[i], gg));
      mom[i] = nv;
      q = __fsub_rn(p, __fmul_rn(a.lr, __fdiv_rn(g, __fadd_rn(__fsqrt_rn(nv), a.eps))));
    } else if (a.mu == 0.0f && a.wd == 0.0f) {
      q = __fsub_rn(p, __fmul_rn(a.lr, g));
    } else {
      if (a.wd != 0.0f) g = __fadd_rn(g, __fmul_rn(a.wd, p));
      if (a.mu != 0.0f) {
        float m = a.first ? g : __fadd_rn(__fmul_rn(a.mu, mom[i]), g);
        mom[i] = m;
        g = a.nest ? __fadd_rn(g, __fmul_rn(a.mu, m)) : m;
      }
      q = __fsub_rn(p, __fmul_rn(a.lr, g));
    }
    if (DT == PX_DT_F32) {
      uint32_t nb = __float_as_uint(q);
      ((uint32_t*)params)[i] = nb;
      if (enc0) {
        uint32_t z = zz32(nb - ob);
        enc0[i] = (uint8_t)z;
        enc0[n + i] = (uint8_t)(z >> 8);
        enc0[2 * n + i] = (uint8_t)(z >> 16);
        enc0[3 * n + i] = (uint8_t)(z >> 24);
      }
      if (bits1 || enc1) {
        uint32_t n16 = d_f32_to_bf16(q), o16 = d_f32_to_bf16(p);
        if (bits1) bits1[i] = (uint16_t)n16;
        if (enc1) {
          uint32_t z = zz16((n16 - o16) & 0xffffu);
          enc1[i] = (uint8_t)z;
          enc1[n + i] = (uint8_t)(z >> 8);
        }
      }
    } else {
      uint32_t nb = DT == PX_DT_BF16 ? d_f32_to_bf16(q) : d_f32_to_f16(q);
      ((uint16_t*)params)[i] = (uint16_t)nb;
      if (enc0) {
        uint32_t z = zz16((nb - ob) & 0xffffu);
        enc0[i] = (uint8_t)z;
        enc0[n + i] = (uint8_t)(z >> 8);
      }
    }
  }
}

static __global__ void k_bf16(const float* __restrict__ p, uint16_t* __restrict__ out, size_t n) {
  GRID_STRIDE(i, n) out[i] = d_f32_to_bf16(p[i]);
}

static inline unsigned grid_for(size_t n) {
  size_t b = (n + THREADS - 1) / THREADS;
  if (b > 65535u * 16u) b = 65535u * 16u; /* the loops stride over the rest */
  return b ? (unsigned)b : 1u;
}

#endif
