/* The lean forward's matmul, y = x W^T (+ bias), on weights packed once into panels of 32
   columns: panel p holds W's rows 32p .. 32p+31 transposed, [depth][32] floats, so a pass
   down a panel reads its weights in order (the last panel is padded with zeros).

   Built with the decode loops into one library (decode_kernels.py). Why: in a decode step
   the weights come from memory, not cache (the model is ~540 MB for the bundled one, its
   cache 32 MB), and oneDNN's matmul on its own packed layout overlapped that stream with
   its arithmetic poorly on a 2-core AMD EPYC (Zen 5, 2026-12-05): the bundled model's 30
   layers of projections, weights cold, took 20.9 ms at 32 rows where this loop takes
   16.9-17.0 (10.8 against 6.8 at 8 rows, 36.5 against 29.5 at 64, 195 against 182 at a
   448-row prefill; both before the chunked order below). Each thread walks its own run of
   panels once, front to back; a block of 8 rows keeps its 8 x 32 sums in 16 AVX-512
   registers while the panel (or a chunk of it) streams past, and the next blocks of rows
   find it in the core's cache. AVX-512 only: with 16
   vector registers instead of 32 the block would not fit, so other machines keep oneDNN's
   or MKL's matmul (ponder_panel_matmul returns -1 there). */

#include <string.h>

#include "simd.h"

#define PANEL 32

#ifdef __AVX512F__

/* Row counts that take the chunked order (measured, see ponder_panel_matmul). */
#define CHUNKED_MIN_ROWS 9
#define CHUNKED_MAX_ROWS 160
/* The chunked order's depth of a chunk (96 x 32 floats: 12 KB, in L1 while every block of
   rows reads it) and its rows at a time (their 64 x 32 sums, 8 KB, kept between chunks). */
#define CHUNK 96
#define GROUP 64

static inline v16 splat(float s) {
  return (v16){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}

/* A row's 32 sums to y; a panel's last columns past `cols` (its padding) are not stored. */
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

#define ROWS1(F) F(0)
#define ROWS2(F) F(0) F(1)
#define ROWS4(F) ROWS2(F) F(2) F(3)
#define ROWS8(F) ROWS4(F) F(4) F(5) F(6) F(7)
#define ACCUMULATE(r)                        \
  {                                          \
    const v16 a = splat(x[(r) * x_row + k]); \
    lo##r += a * w_lo;                       \
    hi##r += a * w_hi;                       \
  }
#define WEIGHTS                                         \
  v16 w_lo, w_hi;                                       \
  memcpy(&w_lo, panel + k * PANEL, sizeof w_lo);        \
  memcpy(&w_hi, panel + k * PANEL + 16, sizeof w_hi);

/* Rows x 32 columns of y for one panel, down its whole depth: sums in registers from zero,
   then stored with the bias added. Kept apart from CHUNK_BLOCK below, whose sums go
   through memory between chunks: taking that path for the whole depth too measured 2-3%
   slower at a prefill's 448 rows. */
#define ZERO(r) v16 lo##r = (v16){0}, hi##r = (v16){0};
#define STORE(r) store(y + (r) * y_row, lo##r + b_lo, hi##r + b_hi, cols);
#define BLOCK(n)                                                                        \
  static void block##n(const float *x, long x_row, const float *panel, long depth,      \
                       v16 b_lo, v16 b_hi, float *y, long y_row, int cols) {            \
    ROWS##n(ZERO);                                                                       \
    for (long k = 0; k < depth; k++) {                                                   \
      WEIGHTS                                                                            \
      ROWS##n(ACCUMULATE)                                                                \
    }                                                                                    \
    ROWS##n(STORE)                                                                       \
  }

/* The same for `depth` steps of a chunk, on partial sums loaded from `acc` (rows PANEL
   floats apart) and stored back; its first `lines` steps each prefetch a cache line from
   `ahead` on (the block's share of the next chunk). */
#define LOAD(r)                                    \
  v16 lo##r, hi##r;                                \
  memcpy(&lo##r, acc + (r) * PANEL, sizeof lo##r); \
  memcpy(&hi##r, acc + (r) * PANEL + 16, sizeof hi##r);
#define SAVE(r)                                    \
  memcpy(acc + (r) * PANEL, &lo##r, sizeof lo##r); \
  memcpy(acc + (r) * PANEL + 16, &hi##r, sizeof hi##r);
#define CHUNK_BLOCK(n)                                                                  \
  static void chunk_block##n(const float *x, long x_row, const float *panel, long depth, \
                             float *acc, const char *ahead, long lines) {               \
    ROWS##n(LOAD);                                                                       \
    for (long k = 0; k < depth; k++) {                                                   \
      if (k < lines) __builtin_prefetch(ahead + k * 64);                                 \
      WEIGHTS                                                                            \
      ROWS##n(ACCUMULATE)                                                                \
    }                                                                                    \
    ROWS##n(SAVE)                                                                        \
  }

BLOCK(1)
BLOCK(2)
BLOCK(4)
BLOCK(8)
CHUNK_BLOCK(1)
CHUNK_BLOCK(2)
CHUNK_BLOCK(4)
CHUNK_BLOCK(8)

/* One panel's rows, a block of 8 (then 4, 2, 1) at a time down the whole panel; the next
   blocks find the panel in the core's cache. */
static void down_the_panel(const float *x, long x_row, const float *panel, long depth,
                           v16 b_lo, v16 b_hi, float *y, long y_row, long rows, int cols) {
  long r = 0;
#define ARGS x + r * x_row, x_row, panel, depth, b_lo, b_hi, y + r * y_row, y_row, cols
  for (; r + 8 <= rows; r += 8) block8(ARGS);
  if (r + 4 <= rows) block4(ARGS), r += 4;
  if (r + 2 <= rows) block2(ARGS), r += 2;
  if (r < rows) block1(ARGS);
#undef ARGS
}

/* One panel's rows, every block of them through a chunk before any goes on to the next,
   the blocks together prefetching the next chunk (2 cache lines a step of depth). */
static void by_chunks(const float *x, long x_row, const float *panel, long depth, v16 b_lo,
                      v16 b_hi, float *y, long y_row, long rows, int cols) {
  float acc[GROUP * PANEL] __attribute__((aligned(64)));
  for (long g = 0; g < rows; g += GROUP) {
    const long n = rows - g < GROUP ? rows - g : GROUP;
    const long blocks = n / 8 + ((n & 4) != 0) + ((n & 2) != 0) + (n & 1);
    memset(acc, 0, (size_t)n * PANEL * sizeof(float));
    for (long k = 0; k < depth; k += CHUNK) {
      const long steps = depth - k < CHUNK ? depth - k : CHUNK;
      const long share = (2 * steps + blocks - 1) / blocks;
      const float *chunk = panel + k * PANEL;
      const char *ahead = (const char *)(chunk + steps * PANEL);
      long r = 0, b = 0;
#define ARGS x + (g + r) * x_row + k, x_row, chunk, steps, acc + r * PANEL, \
             ahead + b++ * share * 64, share
      for (; r + 8 <= n; r += 8) chunk_block8(ARGS);
      if (r + 4 <= n) chunk_block4(ARGS), r += 4;
      if (r + 2 <= n) chunk_block2(ARGS), r += 2;
      if (r < n) chunk_block1(ARGS);
#undef ARGS
    }
    for (long r = 0; r < n; r++) {
      v16 lo, hi;
      memcpy(&lo, acc + r * PANEL, sizeof lo);
      memcpy(&hi, acc + r * PANEL + 16, sizeof hi);
      store(y + (g + r) * y_row, lo + b_lo, hi + b_hi, cols);
    }
  }
}

/* y [rows][cols] (rows y_row floats apart) = x [rows][depth] (rows x_row floats apart, each
   contiguous) times the weights in `panels` ([ceil(cols / 32)][depth][32]), plus bias
   [cols] unless NULL. Returns 0, or -1 where this library has no code (no AVX-512).

   Every row's sums run over the depth in the same order on either path, so a row's result
   does not depend on how many rows share the call. Why two orders: down the panel, the
   first block of rows streams the panel from memory faster than its arithmetic can use it
   and the others stream nothing, so memory and arithmetic take turns; fine where one
   dominates, at a few rows (memory) or hundreds (arithmetic). By chunks, the panel
   streams in at the pace the arithmetic uses it. Measured on the 2-core AMD EPYC (Zen 5,
   2026-12-05), the bundled model's 30 layers of projections, weights cold, by chunks
   against down the panel: 15.1-16.5 against 19.2-20.4 ms at 32 rows, 8.1-11.5 against
   11.9-13.9 at 16, 29.1-31.4 against 33.0-34.2 at 64; its 49152-column LM head 4.0-4.3
   against 5.3-5.8 ms at 32 rows; but 15-25% slower at 2-8 rows and 1-8% from 192 on.
   Hence the range of rows that goes by chunks. */
int ponder_panel_matmul(const float *x, long x_row, const float *panels, const float *bias,
                        float *y, long y_row, long rows, long cols, long depth) {
  const long count = (cols + PANEL - 1) / PANEL;
  const int chunked = rows >= CHUNKED_MIN_ROWS && rows <= CHUNKED_MAX_ROWS;
#pragma omp parallel for schedule(static)
  for (long p = 0; p < count; p++) {
    const int width = cols - p * PANEL < PANEL ? (int)(cols - p * PANEL) : PANEL;
    float padded[PANEL] = {0};
    if (bias) memcpy(padded, bias + p * PANEL, (size_t)width * sizeof(float));
    v16 b_lo, b_hi;
    memcpy(&b_lo, padded, sizeof b_lo);
    memcpy(&b_hi, padded + 16, sizeof b_hi);
    (chunked ? by_chunks : down_the_panel)(x, x_row, panels + p * depth * PANEL, depth,
                                           b_lo, b_hi, y + p * PANEL, y_row, rows, width);
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
