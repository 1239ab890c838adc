/* A decode step's work on each row of next-token logits, a row at a time so that it stays
   in the core's cache:
   - its statistics, in two passes over the row: log Z (so that log p = logit - log Z), the
     entropy of softmax(logits) and its self-certainty, what sampling.softmax_stats
     computes with torch's ops;
   - a draw at a temperature with no filter: the first token whose cumulative probability
     (float64) exceeds the row's uniform, what sampling.sample_tempered draws with torch's.

   Built with the other decode loops into one library (decode_kernels.py). Why: torch
   takes eight passes over the [rows, vocab] block for the statistics (max, subtract, exp,
   sum, min, product, sum, mean), 0.44 ms a step at 16 rows of the bundled model's 49152
   tokens on a 2-core AMD EPYC, and for the draw a float64 copy, softmax and cumulative sum
   of the block (~1 ms at 16 rows there); a row of 49152 floats fits the core's cache. */

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "simd.h"

/* Where `pick` is true a, else b (C has no vector ?:). */
static inline v16 select(i16 pick, v16 a, v16 b) {
  return (v16)((pick & (i16)a) | (~pick & (i16)b));
}

static inline float hmax(v16 a) {
  float m = a[0];
  for (int i = 1; i < 16; i++) m = a[i] > m ? a[i] : m;
  return m;
}

static inline float hmin(v16 a) {
  float m = a[0];
  for (int i = 1; i < 16; i++) m = a[i] < m ? a[i] : m;
  return m;
}

/* Row r of logits at logits + r * row_stride, vocab floats. With d = logit - max and
   e = e^d: log_z = max + log sum(e), entropy = log sum(e) - sum(e d) / sum(e), certainty =
   log sum(e) - mean(d) - log(vocab). Returns 0, or 1 when some row has a logit that is not
   finite (a NaN, an infinity, a token ruled out) or a token whose log-probability is below
   `floor` (where self-certainty floors it): the caller then takes torch's path for every
   row, as sampling.softmax_stats does. */
int ponder_softmax_stats(const float *logits, long row_stride, long rows, long vocab,
                         float floor, float *log_z, float *entropy, float *certainty) {
  int refused = 0;
#pragma omp parallel for schedule(static) reduction(| : refused) if (rows > 1)
  for (long r = 0; r < rows; r++) {
    const float *row = logits + r * row_stride;
    const long whole = vocab - vocab % 16;
    v16 top = (v16){0} - FLT_MAX, low = (v16){0} + FLT_MAX, sum = (v16){0};
    for (long i = 0; i < whole; i += 16) {
      v16 a;
      __builtin_memcpy(&a, row + i, sizeof a);
      top = select(a > top, a, top);
      low = select(a < low, a, low);
      sum += a;
    }
    float m = hmax(top), lowest = hmin(low), total = hsum(sum);
    for (long i = whole; i < vocab; i++) {
      m = row[i] > m ? row[i] : m;
      lowest = row[i] < lowest ? row[i] : lowest;
      total += row[i];
    }
    /* a NaN or an infinity makes the sum not finite (so does a sum past FLT_MAX) */
    if (!isfinite(total) || !isfinite(m) || !isfinite(lowest)) {
      refused = 1;
      continue;
    }
    v16 weights = (v16){0}, weighted = (v16){0};
    for (long i = 0; i < whole; i += 16) {
      v16 a;
      __builtin_memcpy(&a, row + i, sizeof a);
      const v16 d = a - m, e = vexp(d);
      weights += e;
      weighted += e * d;
    }
    float s = hsum(weights), t = hsum(weighted);
    for (long i = whole; i < vocab; i++) {
      const float d = row[i] - m, e = expf(d);
      s += e;
      t += e * d;
    }
    const float log_s = logf(s);
    if ((lowest - m) - log_s < floor) {
      refused = 1;
      continue;
    }
    log_z[r] = m + log_s;
    entropy[r] = log_s - t / s;
    certainty[r] = log_s - (total / (float)vocab - m) - logf((float)vocab);
  }
  return refused;
}

typedef double d8 __attribute__((vector_size(64)));
typedef int64_t l8 __attribute__((vector_size(64)));

/* e^x for x <= 0 in float64: e^x = 2^n e^r with r = x - n ln 2 (ln 2 in two parts), |r| <=
   ln 2 / 2, and e^r by its degree-13 Taylor polynomial (truncation error ~4e-18, under
   float64's rounding). Below -708, where float64's e^x is denormal or 0, it returns 0. */
static inline d8 dexp(d8 x) {
  const l8 below = x < -708.0;
  x = (d8)((l8)x & ~below);
  const d8 n = __builtin_convertvector(
      __builtin_convertvector(x * 1.4426950408889634074 - 0.5, l8), d8);
  const d8 r = x - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
  d8 p = (d8){0} + 1.0 / 6227020800.0;                /* 1/13! */
  p = p * r + 1.0 / 479001600.0;                     /* 1/12! */
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const l8 scale = (__builtin_convertvector(n, l8) + 1023) << 52;
  return (d8)((l8)(p * (d8)scale) & ~below);
}

#define BLOCK 256 /* columns whose weights are summed together on the first pass */

/* Row r of logits (row_stride floats apart, vocab wide) at temperature temperature[r] with
   uniform[r] in [0, 1): with x = logit / temperature (in fp32, as torch divides) and
   weights w = e^(x - max x) in float64, tokens[r] = the first column whose running sum of
   weights exceeds uniform[r] times their total (the last column if none does, the float
   edge), log_q[r] = log(w / total) there. The first pass sums the weights by blocks of
   BLOCK columns, so the second recomputes them only in the block where the sum crosses.
   Returns 0, or 1 when some row has a logit that is not finite (the caller then takes
   torch's path, which handles tokens ruled out). */
int ponder_sample_tempered(const float *logits, long row_stride, long rows, long vocab,
                           const float *temperature, const double *uniform, long *tokens,
                           float *log_q) {
  int refused = 0;
#pragma omp parallel for schedule(static) reduction(| : refused) if (rows > 1)
  for (long r = 0; r < rows; r++) {
    const float *row = logits + r * row_stride;
    const float t = temperature[r];
    const v16 tv = (v16){0} + t;
    const long whole = vocab - vocab % 16;
    v16 top = (v16){0} - FLT_MAX;
    i16 bad = (i16){0};
    for (long i = 0; i < whole; i += 16) {
      v16 a;
      __builtin_memcpy(&a, row + i, sizeof a);
      const v16 x = a / tv;
      bad |= (x - x) != 0.0f; /* NaN for a NaN or an infinity */
      top = select(x > top, x, top);
    }
    float m = hmax(top);
    int finite = 1;
    for (int j = 0; j < 16; j++) finite &= !bad[j];
    for (long i = whole; i < vocab; i++) {
      const float x = row[i] / t;
      finite &= isfinite(x);
      m = x > m ? x : m;
    }
    if (!finite) {
      refused = 1;
      continue;
    }
    const long blocks = (vocab + BLOCK - 1) / BLOCK;
    double sums[blocks];
    double total = 0.0;
    const d8 md = (d8){0} + (double)m;
    for (long b = 0; b < blocks; b++) {
      const long start = b * BLOCK, stop = start + BLOCK < vocab ? start + BLOCK : vocab;
      d8 acc = (d8){0};
      long i = start;
      for (; i + 16 <= stop; i += 16) {
        v16 a;
        __builtin_memcpy(&a, row + i, sizeof a);
        const v16 x = a / tv;
        const v8 low = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
        const v8 high = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
        acc += dexp(__builtin_convertvector(low, d8) - md) +
               dexp(__builtin_convertvector(high, d8) - md);
      }
      double s = 0.0;
      for (int j = 0; j < 8; j++) s += acc[j];
      for (; i < stop; i++) s += exp((double)(row[i] / t) - (double)m);
      sums[b] = s;
      total += s;
    }
    const double target = uniform[r] * total;
    double running = 0.0, weight = 0.0;
    long token = -1;
    for (long b = 0; b < blocks && token < 0; b++) {
      if (running + sums[b] <= target) {
        running += sums[b];
        continue;
      }
      const long start = b * BLOCK, stop = start + BLOCK < vocab ? start + BLOCK : vocab;
      for (long i = start; i < stop; i++) {
        weight = exp((double)(row[i] / t) - (double)m);
        running += weight;
        if (running > target) {
          token = i;
          break;
        }
      }
    }
    if (token < 0) { /* rounding left the target at the total: torch's clamp */
      token = vocab - 1;
      weight = exp((double)(row[token] / t) - (double)m);
    }
    tokens[r] = token;
    log_q[r] = (float)log(weight / total);
  }
  return refused;
}
