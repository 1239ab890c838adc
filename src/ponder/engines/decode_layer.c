/* One decoder layer of a decode step as one call: the lean forward's _fused_decode body
   (q/k/v matmul, attention writing the new column, o matmul, residual add and norm, gate/up
   matmul, SiLU gate, down matmul, residual add and the next norm), run by the functions of
   the other files of this library in turn.

   Built with them into one library (decode_kernels.py). Why: from Python a layer took eight
   calls, each checking its tensors and crossing ctypes (~3-7 us apiece, ~1.2 ms of a
   batch-16 step of the bundled model's 30 layers); here the layout is checked once per
   step by the caller (DecodeKernels.layer_weights, .layer_step, .layer) and the layer is one call. */

/* The functions of the library's other files this one runs. */
int ponder_panel_matmul(const float *x, long x_row, const float *panels, const float *bias,
                        float *y, long y_row, long rows, long cols, long depth);
int ponder_decode_step(const float *q, long q_row, const float *k_new, long k_row,
                       const float *v_new, long v_row, const float *cos, const float *sin,
                       float *k, long kb, long kh, long kl, float *v, long vb, long vh, long vl,
                       const long *prefix_row, const long *prefix_len,
                       const unsigned char *allowed, float *out, int batch, int heads,
                       int groups, int length, int dim, float scale);
int ponder_add_rms_norm(float *x, long x_row, const float *delta, long delta_row,
                        const float *weight, float eps, float *out, long out_row, long rows,
                        int dim);
int ponder_silu_mul(const float *gate, long gate_row, const float *up, long up_row,
                    float *out, long out_row, long rows, int width);

/* A layer's weights: panels as panel_matmul.c packs them (q/k/v stacked, gate/up stacked),
   biases or NULL, and the norm after attention and the one after the MLP (the next layer's
   first, or the final norm). */
struct layer {
  const float *qkv, *qkv_bias, *o, *o_bias, *gate_up, *gate_up_bias, *down, *down_bias;
  const float *norm, *next_norm;
  float norm_eps, next_eps;
};

/* What every layer of one step shares: its rows, the model's shape, the rotary tables,
   the attention's mask and shared-prompt rows (or NULL), and scratch rows, all contiguous
   [batch, width]. */
struct step {
  long batch, hidden, inter;
  int kv_heads, groups, dim, length;
  float scale;
  float *x; /* the residual stream, updated in place */
  const float *cos, *sin;
  const long *prefix_row, *prefix_len;
  const unsigned char *allowed;
  float *qkv, *attended, *projected, *normed, *gate_up, *gated;
};

/* Layer `w` on `h` (the normed residual), the cache's keys and values (element (b, h, l, d)
   at k + b*kb + h*kh + l*kl + d, the step's column last and unwritten); writes the next
   normed residual to `out`. Returns 0, or the first failing call's status. */
int ponder_decode_layer(const struct step *s, const struct layer *w, const float *h,
                        float *out, float *k, long kb, long kh, long kl, float *v, long vb,
                        long vh, long vl) {
  const long b = s->batch, q_width = (long)s->kv_heads * s->groups * s->dim;
  const long kv_width = (long)s->kv_heads * s->dim, qkv_width = q_width + 2 * kv_width;
  int status = ponder_panel_matmul(h, s->hidden, w->qkv, w->qkv_bias, s->qkv, qkv_width, b,
                                   qkv_width, s->hidden);
  if (!status)
    status = ponder_decode_step(s->qkv, qkv_width, s->qkv + q_width, qkv_width,
                                s->qkv + q_width + kv_width, qkv_width, s->cos, s->sin, k, kb,
                                kh, kl, v, vb, vh, vl, s->prefix_row, s->prefix_len,
                                s->allowed, s->attended, (int)b, s->kv_heads, s->groups,
                                s->length, s->dim, s->scale);
  if (!status)
    status = ponder_panel_matmul(s->attended, q_width, w->o, w->o_bias, s->projected,
                                 s->hidden, b, s->hidden, q_width);
  if (!status)
    status = ponder_add_rms_norm(s->x, s->hidden, s->projected, s->hidden, w->norm,
                                 w->norm_eps, s->normed, s->hidden, b, (int)s->hidden);
  if (!status)
    status = ponder_panel_matmul(s->normed, s->hidden, w->gate_up, w->gate_up_bias,
                                 s->gate_up, 2 * s->inter, b, 2 * s->inter, s->hidden);
  if (!status)
    status = ponder_silu_mul(s->gate_up, 2 * s->inter, s->gate_up + s->inter, 2 * s->inter,
                             s->gated, s->inter, b, (int)s->inter);
  if (!status)
    status = ponder_panel_matmul(s->gated, s->inter, w->down, w->down_bias, s->projected,
                                 s->hidden, b, s->hidden, s->inter);
  if (!status)
    status = ponder_add_rms_norm(s->x, s->hidden, s->projected, s->hidden, w->next_norm,
                                 w->next_eps, out, s->hidden, b, (int)s->hidden);
  return status;
}
