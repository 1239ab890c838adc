/* A decode step's statistics of each row of next-token logits, in two passes over the row:
   log Z (so that log p = logit - log Z), the entropy of softmax(logits) and its
   self-certainty. What sampling.softmax_stats computes with torch's ops.

   Built with the other decode loops into one library (attention_kernel.py). Why: torch
   takes eight passes over the [rows, vocab] block for these (max, subtract, exp, sum, min,
   product, sum, mean), 0.44 ms a step at 16 rows of the bundled model's 49152 tokens on a
   2-core AMD EPYC, where two passes over a row that stays in the core's cache take a
   fraction of that. */

#include <float.h>
#include <math.h>

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
