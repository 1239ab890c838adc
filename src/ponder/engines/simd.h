/* Vector types and helpers shared by ponder's compiled decode loops (decode_attention.c,
   decode_glue.c): GCC/Clang vector extensions, 16 floats (one AVX-512 register, or two
   AVX2 ones, as -march=native allows). */

#ifndef PONDER_SIMD_H
#define PONDER_SIMD_H

#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline float hsum(v16 a) {
  v8 b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return (c[0] + c[2]) + (c[1] + c[3]);
}

/* e^x for x <= 0 (a score minus its row's running maximum): e^x = 2^n e^r with
   r = x - n ln 2, |r| <= ln 2 / 2, and e^r by its degree-7 Taylor polynomial (relative
   error ~1e-7). Below -87, where fp32's e^x is denormal or 0, it returns 0, as a masked
   column must get. */
static inline v16 vexp(v16 x) {
  const i16 below = x < -87.0f;
  x = (v16)((i16)x & ~below); /* 0 there: keeps 2^n in range */
  /* x <= 0, so truncating x log2(e) - 0.5 rounds it to a nearest integer */
  const v16 n = __builtin_convertvector(
      __builtin_convertvector(x * 1.44269504088896341f - 0.5f, i16), v16);
  const v16 r = x - n * 0.693359375f + n * 2.12194440e-4f; /* ln 2 in two parts */
  v16 p = (v16){0} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i16 scale = (__builtin_convertvector(n, i16) + 127) << 23;
  return (v16)((i16)(p * (v16)scale) & ~below);
}

#endif
