/* The steps of a decode step between the lean forward's matmuls, each one compiled loop:
   the residual add with the RMSNorm after it, and the SiLU gate of the MLP.

   Built with decode_attention.c into one library (decode_kernels.py). Why: at decode
   shapes (1 to 64 rows of 576 or 1536 floats for the bundled model) torch spends more on
   dispatching these small ops than on their arithmetic: torch.rms_norm alone is a chain of
   five (square, mean, add, rsqrt, two products), ~7-15 us a call where the arithmetic takes
   well under one, and a layer runs two norms, two adds, a SiLU and a product. Here each is
   one call. Large inputs (a prefill's rows) are split over torch's OpenMP threads. */

#include <math.h>

#include "simd.h"

/* Fewer floats than this run on the calling thread: waking the pool costs more. */
#define PARALLEL_FLOATS 32768

/* Row r of x (x_row floats apart) gets row r of delta added in place (delta NULL: nothing
   added); then out's row r = x's row r / sqrt(mean(x^2) + eps) * weight, as torch.rms_norm
   computes it. dim: a multiple of 16 (else -1 and nothing done). */
int ponder_add_rms_norm(float *x, long x_row, const float *delta, long delta_row,
                        const float *weight, float eps, float *out, long out_row, long rows,
                        int dim) {
  if (dim % 16) return -1;
#pragma omp parallel for schedule(static) if (rows * dim >= PARALLEL_FLOATS)
  for (long r = 0; r < rows; r++) {
    float *xr = x + r * x_row, *o = out + r * out_row;
    v16 squares = (v16){0};
    for (int i = 0; i < dim; i += 16) {
      v16 a;
      __builtin_memcpy(&a, xr + i, sizeof a);
      if (delta) {
        v16 d;
        __builtin_memcpy(&d, delta + r * delta_row + i, sizeof d);
        a += d;
        __builtin_memcpy(xr + i, &a, sizeof a);
      }
      squares += a * a;
    }
    const float inverse = 1.0f / sqrtf(hsum(squares) / (float)dim + eps);
    for (int i = 0; i < dim; i += 16) {
      v16 a, w;
      __builtin_memcpy(&a, xr + i, sizeof a);
      __builtin_memcpy(&w, weight + i, sizeof w);
      a = a * inverse * w;
      __builtin_memcpy(o + i, &a, sizeof a);
    }
  }
  return 0;
}

/* out's row r = silu(gate's row r) * up's row r, silu(g) = g / (1 + e^-g), from e = e^-|g|
   (in (0, 1], where vexp is accurate): sigmoid(g) = 1 / (1 + e) for g >= 0 and e / (1 + e)
   below. width: a multiple of 16 (else -1 and nothing done). */
int ponder_silu_mul(const float *gate, long gate_row, const float *up, long up_row,
                    float *out, long out_row, long rows, int width) {
  if (width % 16) return -1;
  const i16 magnitude = (i16){0} + 0x7fffffff;
  const v16 one = (v16){0} + 1.0f;
#pragma omp parallel for schedule(static) if (rows * width >= PARALLEL_FLOATS)
  for (long r = 0; r < rows; r++) {
    const float *g = gate + r * gate_row, *u = up + r * up_row;
    float *o = out + r * out_row;
    for (int i = 0; i < width; i += 16) {
      v16 a, b;
      __builtin_memcpy(&a, g + i, sizeof a);
      __builtin_memcpy(&b, u + i, sizeof b);
      const v16 e = vexp(-(v16)((i16)a & magnitude));
      const i16 positive = a >= 0.0f;
      const v16 numerator = (v16)((positive & (i16)one) | (~positive & (i16)e));
      const v16 y = a * (numerator / (one + e)) * b;
      __builtin_memcpy(o + i, &y, sizeof y);
    }
  }
  return 0;
}
