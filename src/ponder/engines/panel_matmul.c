/* The lean forward's matmul, y = x W^T (+ bias), on weights packed once into panels of 32
   columns: panel p holds W's rows 32p .. 32p+31 transposed, [depth][32] floats, so a pass
   down a panel reads its weights in order (the last panel is padded with zeros).

   Built with the decode loops into one library (decode_kernels.py). Why: in a decode step
   the weights come from memory, not cache (the model is ~540 MB for the bundled one, its
   cache 32 MB), and oneDNN's matmul on its own packed layout overlapped that stream with
   its arithmetic poorly on a 2-core AMD EPYC (Zen 5, 2026-12-05): the bundled model's 30
   layers of projections, weights cold, took 20.9 ms at 32 rows where this loop takes
   16.9-17.0 (10.8 against 6.8 at 8 rows, 36.5 against 29.5 at 64, 195 against 182 at a
   448-row prefill). Each thread walks its own run of panels once, front to back; a block
   of 8 rows keeps its 8 x 32 sums in 16 AVX-512 registers while the panel streams past,
   and the next blocks of rows find the panel in the core's cache. AVX-512 only: with 16
   vector registers instead of 32 the block would not fit, so other machines keep oneDNN's
   or MKL's matmul (ponder_panel_matmul returns -1 there). */

#include <string.h>

#include "simd.h"

#define PANEL 32

#ifdef __AVX512F__

/* Rows x 32 columns of y for one panel: sums over `depth` in registers, then stored with
   the bias added; a panel's last columns past `cols` (its padding) are not stored. */
#define DECLARE(r) v16 lo##r = (v16){0}, hi##r = (v16){0};
#define ACCUMULATE(r)                  \
  {                                    \
    const v16 a = splat(x[(r) * x_row + k]); \
    lo##r += a * w_lo;                 \
    hi##r += a * w_hi;                 \
  }
#define STORE(r) store(y + (r) * y_row, lo##r + b_lo, hi##r + b_hi, cols);
#define ROWS1(F) F(0)
#define ROWS2(F) F(0) F(1)
#define ROWS4(F) ROWS2(F) F(2) F(3)
#define ROWS8(F) ROWS4(F) F(4) F(5) F(6) F(7)
#define BLOCK(n)                                                                        \
  static void block##n(const float *x, long x_row, const float *panel, long depth,      \
                       v16 b_lo, v16 b_hi, float *y, long y_row, int cols) {            \
    ROWS##n(DECLARE);                                                                    \
    for (long k = 0; k < depth; k++) {                                                   \
      v16 w_lo, w_hi;                                                                    \
      memcpy(&w_lo, panel + k * PANEL, sizeof w_lo);                                     \
      memcpy(&w_hi, panel + k * PANEL + 16, sizeof w_hi);                                \
      ROWS##n(ACCUMULATE)                                                                \
    }                                                                                    \
    ROWS##n(STORE)                                                                       \
  }

static inline v16 splat(float s) {
  return (v16){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}

static inline void store(float *y, v16 lo, v16 hi, int cols) {
  if (cols >= PANEL) {
    memcpy(y, &lo, sizeof lo);
    memcpy(y + 16, &hi, sizeof hi);
  } else {
    float row[PANEL];
    memcpy(row, &lo, sizeof lo);
    memcpy(row + 16, &hi, sizeof hi);
    memcpy(y, row, (size_t)cols * sizeof(float));
  }
}

BLOCK(1)
BLOCK(2)
BLOCK(4)
BLOCK(8)

/* y [rows][cols] (rows y_row floats apart) = x [rows][depth] (rows x_row floats apart, each
   contiguous) times the weights in `panels` ([ceil(cols / 32)][depth][32]), plus bias
   [cols] unless NULL. Returns 0, or -1 where this library has no code (no AVX-512). */
int ponder_panel_matmul(const float *x, long x_row, const float *panels, const float *bias,
                        float *y, long y_row, long rows, long cols, long depth) {
  const long count = (cols + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static)
  for (long p = 0; p < count; p++) {
    const float *panel = panels + p * depth * PANEL;
    const int width = cols - p * PANEL < PANEL ? (int)(cols - p * PANEL) : PANEL;
    float padded[PANEL] = {0};
    if (bias) memcpy(padded, bias + p * PANEL, (size_t)width * sizeof(float));
    v16 b_lo, b_hi;
    memcpy(&b_lo, padded, sizeof b_lo);
    memcpy(&b_hi, padded + 16, sizeof b_hi);
    float *out = y + p * PANEL;
    long r = 0;
    for (; r + 8 <= rows; r += 8)
      block8(x + r * x_row, x_row, panel, depth, b_lo, b_hi, out + r * y_row, y_row, width);
    if (r + 4 <= rows) {
      block4(x + r * x_row, x_row, panel, depth, b_lo, b_hi, out + r * y_row, y_row, width);
      r += 4;
    }
    if (r + 2 <= rows) {
      block2(x + r * x_row, x_row, panel, depth, b_lo, b_hi, out + r * y_row, y_row, width);
      r += 2;
    }
    if (r < rows)
      block1(x + r * x_row, x_row, panel, depth, b_lo, b_hi, out + r * y_row, y_row, width);
  }
  return 0;
}

#else

int ponder_panel_matmul(const float *x, long x_row, const float *panels, const float *bias,
                        float *y, long y_row, long rows, long cols, long depth) {
  (void)x, (void)x_row, (void)panels, (void)bias, (void)y, (void)y_row, (void)rows,
      (void)cols, (void)depth;
  return -1;
}

#endif
