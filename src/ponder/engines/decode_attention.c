/* Attention of one decode step: each row's one new query per query head over that row's
   cached keys and values, in fp32, as one loop over (row, key/value head) pairs.

   Built on first use by decode_kernels.py with the machine's C compiler (-O3
   -march=native -fopenmp) and called through ctypes; its OpenMP loop runs on the thread
   pool torch already has (the process has one libgomp). Why a loop of our own: in a decode
   step the cached keys and values come from memory, not cache (the weights streamed since
   the last step have evicted them), and torch's batched matmuls, one small matrix product
   per (row, head), waited on that memory at about a third of its bandwidth. Here each key
   and value row is read once for all the query heads that share it, the rows a few columns
   ahead are asked for before they are needed, and the softmax is taken online, tile by
   tile, so nothing but the output is written. */

#include <float.h>
#include <math.h>
#include <stddef.h>

#include "simd.h"

#define TILE 64  /* columns scored before their softmax weights are applied */
#define AHEAD 16 /* key rows requested this many columns before they are read */

/* Rotary embedding of one head's vector x (C chunks of 16): x * cos + roll(x, dim / 2) *
   signed_sin, signed_sin being sin with its first half negated (lean.py's _rotate). */
static inline __attribute__((always_inline)) void rotate(v16 *out, const float *x,
                                                         const float *cos, const float *sin,
                                                         const int C) {
  v16 xc[C];
  for (int c = 0; c < C; c++) __builtin_memcpy(&xc[c], x + 16 * c, sizeof xc[c]);
  for (int c = 0; c < C; c++) {
    v16 cc, sc;
    __builtin_memcpy(&cc, cos + 16 * c, sizeof cc);
    __builtin_memcpy(&sc, sin + 16 * c, sizeof sc);
    out[c] = xc[c] * cc + xc[(c + C / 2) % C] * sc;
  }
}

/* The step's new inputs where the loop also rotates and stores them (a NULL `fresh`:
   the queries are rotated already and the new column is in the cache). */
struct fresh {
  const float *k, *v, *cos, *sin; /* new keys/values [batch, kv_heads*dim], rows of k_row */
  long k_row, v_row;
};

/* One (row, key/value head) pair. G (query heads per key/value head) and C (head_dim / 16)
   are constants where this is inlined below, so that the queries and the accumulators
   live in registers. */
static inline __attribute__((always_inline)) void attend_pair(
    const float *q, long q_row, const struct fresh *fresh, float *k, long kb, long kh,
    long kl, float *v, long vb, long vh, long vl, const long *prefix_row,
    const long *prefix_len, const unsigned char *allowed, float *out, int heads, int length,
    float scale, long pair, const int G, const int C) {
  const int dim = 16 * C;
  const long b = pair / heads, h = pair % heads;
  /* Columns before `shared` are read from row `lead` (rows that share a prompt's keys and
     values read one copy of them, which then stays in cache). */
  const long shared = prefix_len ? prefix_len[b] : 0, lead = prefix_row ? prefix_row[b] : b;
  const unsigned char *mask = allowed ? allowed + b * length : NULL;
  v16 qv[G][C], acc[G][C];
  float best[G], total[G];
  if (fresh) { /* this pair's new key (rotated) and value into the cache's last column */
    const float *cos = fresh->cos + b * dim, *sin = fresh->sin + b * dim;
    v16 kr[C];
    rotate(kr, fresh->k + b * fresh->k_row + h * dim, cos, sin, C);
    float *kd = k + b * kb + h * kh + (length - 1) * kl;
    float *vd = v + b * vb + h * vh + (length - 1) * vl;
    const float *vs = fresh->v + b * fresh->v_row + h * dim;
    for (int c = 0; c < C; c++) {
      __builtin_memcpy(kd + 16 * c, &kr[c], sizeof kr[c]);
      __builtin_memcpy(vd + 16 * c, vs + 16 * c, sizeof kr[c]);
    }
  }
  for (int g = 0; g < G; g++) {
    const float *qg = q + b * q_row + (h * G + g) * dim;
    if (fresh) {
      rotate(qv[g], qg, fresh->cos + b * dim, fresh->sin + b * dim, C);
    } else {
      for (int c = 0; c < C; c++) __builtin_memcpy(&qv[g][c], qg + 16 * c, sizeof qv[g][c]);
    }
    for (int c = 0; c < C; c++) {
      qv[g][c] *= scale;
      acc[g][c] = (v16){0};
    }
    best[g] = -FLT_MAX;
    total[g] = 0.f;
  }
  float s[G][TILE] __attribute__((aligned(64)));
  for (int t0 = 0; t0 < length; t0 += TILE) {
    const int n = length - t0 < TILE ? length - t0 : TILE;
    for (int i = 0; i < n; i++) {
      const long l = t0 + i, row = l < shared ? lead : b;
      const long ahead = l + AHEAD < length ? l + AHEAD : length - 1;
      const float *kn = k + (ahead < shared ? lead : b) * kb + h * kh + ahead * kl;
      const float *vn = v + row * vb + h * vh + l * vl; /* read after this tile's scores */
      for (int c = 0; c < C; c++) {
        __builtin_prefetch(kn + 16 * c);
        __builtin_prefetch(vn + 16 * c);
      }
      const float *kr = k + row * kb + h * kh + l * kl;
      v16 kc[C];
      for (int c = 0; c < C; c++) __builtin_memcpy(&kc[c], kr + 16 * c, sizeof kc[c]);
      for (int g = 0; g < G; g++) {
        v16 a = qv[g][0] * kc[0];
        for (int c = 1; c < C; c++) a += qv[g][c] * kc[c];
        /* the finite minimum, as torch's path masks: a fully masked row stays finite */
        s[g][i] = (mask && !mask[l]) ? -FLT_MAX : hsum(a);
      }
    }
    for (int g = 0; g < G; g++) { /* online softmax: rescale what came before */
      float top = best[g];
      for (int i = 0; i < n; i++) top = s[g][i] > top ? s[g][i] : top;
      const float rescale = expf(best[g] - top);
      best[g] = top;
      total[g] *= rescale;
      for (int c = 0; c < C; c++) acc[g][c] *= rescale;
      v16 sum = (v16){0};
      int i = 0;
      for (; i + 16 <= n; i += 16) {
        v16 x;
        __builtin_memcpy(&x, &s[g][i], sizeof x);
        x = vexp(x - top);
        __builtin_memcpy(&s[g][i], &x, sizeof x);
        sum += x;
      }
      float rest = hsum(sum);
      for (; i < n; i++) {
        s[g][i] = expf(s[g][i] - top);
        rest += s[g][i];
      }
      total[g] += rest;
    }
    for (int i = 0; i < n; i++) {
      const long l = t0 + i, row = l < shared ? lead : b;
      const float *vr = v + row * vb + h * vh + l * vl;
      v16 vc[C];
      for (int c = 0; c < C; c++) __builtin_memcpy(&vc[c], vr + 16 * c, sizeof vc[c]);
      for (int g = 0; g < G; g++)
        for (int c = 0; c < C; c++) acc[g][c] += s[g][i] * vc[c];
    }
  }
  for (int g = 0; g < G; g++) {
    float *o = out + b * heads * G * dim + (h * G + g) * dim;
    const float inv = 1.f / total[g];
    for (int c = 0; c < C; c++) {
      const v16 x = acc[g][c] * inv;
      __builtin_memcpy(o + 16 * c, &x, sizeof x);
    }
  }
}

#define PAIRS(G, C)                                                                       \
  {                                                                                       \
    _Pragma("omp parallel for schedule(static)")                                          \
    for (long p = 0; p < (long)batch * heads; p++)                                        \
      attend_pair(q, q_row, fresh, k, kb, kh, kl, v, vb, vh, vl, prefix_row, prefix_len,  \
                  allowed, out, heads, length, scale, p, G, C);                           \
    return 0;                                                                             \
  }

/* One case per supported group size (query heads per key/value head), C chunks a head. */
#define BY_GROUPS(C)                                                                      \
  switch (groups) {                                                                       \
    case 1: PAIRS(1, C)                                                                   \
    case 2: PAIRS(2, C)                                                                   \
    case 3: PAIRS(3, C)                                                                   \
    case 4: PAIRS(4, C)                                                                   \
    case 5: PAIRS(5, C)                                                                   \
    case 6: PAIRS(6, C)                                                                   \
    case 7: PAIRS(7, C)                                                                   \
    case 8: PAIRS(8, C)                                                                   \
  }

static int attend(const float *q, long q_row, const struct fresh *fresh, float *k, long kb,
                  long kh, long kl, float *v, long vb, long vh, long vl,
                  const long *prefix_row, const long *prefix_len,
                  const unsigned char *allowed, float *out, int batch, int heads, int groups,
                  int length, int dim, float scale) {
  if (dim == 64) BY_GROUPS(4)
  if (dim == 128) BY_GROUPS(8)
  return -1;
}

/* q: row b's queries at q + b*q_row, query head j at j*dim (query head j reads key/value head
   j / groups). Keys: element (b, h, l, d) at k + b*kb + h*kh + l*kl + d; values likewise.
   prefix_row, prefix_len: per row, or NULL (see attend_pair). allowed: [batch, length], 0 =
   masked, or NULL. out: [batch, heads*groups*dim]. Returns 0, or -1 for a head size or group
   this file has no code for (the caller then keeps torch's path). */
int ponder_decode_attention(const float *q, long q_row, const float *k, long kb, long kh,
                            long kl, const float *v, long vb, long vh, long vl,
                            const long *prefix_row, const long *prefix_len,
                            const unsigned char *allowed, float *out, int batch, int heads,
                            int groups, int length, int dim, float scale) {
  return attend(q, q_row, NULL, (float *)k, kb, kh, kl, (float *)v, vb, vh, vl, prefix_row,
                prefix_len, allowed, out, batch, heads, groups, length, dim, scale);
}

/* The same, from the step's projections as they come: the queries and the new keys are
   rotated here (cos, sin: [batch, dim], sin's first half negated), and each row's new key and
   value are written into the cache's last column (length - 1) before it is read. q, k_new,
   v_new: rows of q_row, k_row, v_row floats, heads contiguous. */
int ponder_decode_step(const float *q, long q_row, const float *k_new, long k_row,
                       const float *v_new, long v_row, const float *cos, const float *sin,
                       float *k, long kb, long kh, long kl, float *v, long vb, long vh, long vl,
                       const long *prefix_row, const long *prefix_len,
                       const unsigned char *allowed, float *out, int batch, int heads,
                       int groups, int length, int dim, float scale) {
  const struct fresh fresh = {k_new, v_new, cos, sin, k_row, v_row};
  return attend(q, q_row, &fresh, k, kb, kh, kl, v, vb, vh, vl, prefix_row, prefix_len,
                allowed, out, batch, heads, groups, length, dim, scale);
}
