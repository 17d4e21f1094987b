// Everything outside convolutions, norms and attention: layout changes at the NCHW boundary,
// the timestep (and class) embedding pieces, classifier-free guidance, the seeded noise and the
// DDPM / DDIM update. Each mirrors the CPU code named in its comment.
//
// Kernels of a sampling step read the step index from device memory (`step`), so one captured
// CUDA graph of a step replays for every step; `advance_step` increments it.

__device__ __forceinline__ long long gidx() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// Op::InputToNhwc: NCHW f32 -> NHWC f16, optionally 2x - 1 (center_input_sample).
extern "C" __global__ void nchw_to_nhwc(const float* x, h16* out, int batch, int c, int hw,
                                        int center) {
    long long i = gidx(), n = (long long)batch * c * hw;
    if (i >= n) return;
    int ch = (int)(i % c);
    long long bp = i / c;
    int p = (int)(bp % hw);
    long long b = bp / hw;
    float v = x[(b * c + ch) * hw + p];
    out[i] = f2h(center ? 2.0f * v - 1.0f : v);
}

// Op::OutputToNchw: NHWC f16 -> NCHW f32.
extern "C" __global__ void nhwc_to_nchw(const h16* in, float* out, int batch, int c, int hw) {
    long long i = gidx(), n = (long long)batch * c * hw;
    if (i >= n) return;
    int p = (int)(i % hw);
    long long bc = i / hw;
    int ch = (int)(bc % c);
    long long b = bc / c;
    out[i] = h2f(in[(b * hw + p) * c + ch]);
}

// diffusers' get_timestep_embedding as the CPU's Sinusoid op (model::forward::sinusoid) computes it: exponent and
// argument in f32, sin / cos in f64. t = ts[(step ? *step : 0) + b * ts_per_sample].
// Entry j of diffusers' get_timestep_embedding(t) of width dim (the Sinusoid op's math).
__device__ __forceinline__ float sinusoid_entry(float t, int j, int dim, int flip,
                                                float freq_shift) {
    int half = dim / 2;
    float y = 0.0f;  // an odd width leaves the last entry zero
    if (j < 2 * half) {
        int f = j < half ? j : j - half;
        bool first = j < half;
        float ln_max_period = -logf(10000.0f);
        float exponent = ln_max_period * (float)f / ((float)half - freq_shift);
        float arg = t * expf(exponent);
        double s = sin((double)arg), co = cos((double)arg);
        // flip_sin_to_cos puts cos first.
        y = (float)((first != (flip != 0)) ? s : co);
    }
    return y;
}

extern "C" __global__ void timestep_sinusoid(const float* ts, const int* step, int ts_per_sample,
                                             h16* out, int batch, int dim, int flip,
                                             float freq_shift) {
    long long i = gidx();
    if (i >= (long long)batch * dim) return;
    int b = (int)(i / dim), j = (int)(i % dim);
    float t = ts[(step ? *step : 0) + b * ts_per_sample];
    out[i] = f2h(sinusoid_entry(t, j, dim, flip, freq_shift));
}

// The op list's ClassSinusoid op (class_embed_type "timestep"): the sinusoid of each sample's
// class label. labels: one per sample, or one for all (n_labels == 1).
extern "C" __global__ void class_sinusoid(const int* labels, int n_labels, h16* out, int batch,
                                          int dim, int flip, float freq_shift) {
    long long i = gidx();
    if (i >= (long long)batch * dim) return;
    int b = (int)(i / dim), j = (int)(i % dim);
    float t = (float)labels[n_labels == 1 ? 0 : b];
    out[i] = f2h(sinusoid_entry(t, j, dim, flip, freq_shift));
}

// The op list's TimestepTable op (time_embedding_type "learned"): out[b] = table[t_b] over
// [batch, dim]. The host checked that every t_b is an integer in [0, steps); the clamp only
// keeps a bad value inside the table.
extern "C" __global__ void timestep_table(const float* ts, const int* step, int ts_per_sample,
                                          const h16* table, h16* out, int batch, int dim,
                                          int steps) {
    long long i = gidx();
    if (i >= (long long)batch * dim) return;
    int b = (int)(i / dim), j = (int)(i % dim);
    int t = (int)ts[(step ? *step : 0) + b * ts_per_sample];
    t = t < 0 ? 0 : (t >= steps ? steps - 1 : t);
    out[i] = table[(long long)t * dim + j];
}

// The op list's Silu op: y = x * sigmoid(x), elementwise (x and y may be the same buffer).
extern "C" __global__ void silu(const h16* x, h16* y, long long n) {
    long long i = gidx();
    if (i < n) y[i] = f2h(silu_f(h2f(x[i])));
}

// The op list's ClassEmbedding op: out[b] = in[b] + table[label[b]] over [batch, e].
// labels: one per sample, or one for all (n_labels == 1).
extern "C" __global__ void class_embed_add(const h16* in, h16* out, const h16* table,
                                           const int* labels, int n_labels, int batch, int e) {
    long long i = gidx();
    if (i >= (long long)batch * e) return;
    int b = (int)(i / e), j = (int)(i % e);
    int label = labels[n_labels == 1 ? 0 : b];
    out[i] = f2h(h2f(in[i]) + h2f(table[(long long)label * e + j]));
}

// Classifier-free guidance (sampler.rs): eps = (1 + s) eps - s eps_uncond on the first c of
// c_out channels of each sample; learned-variance channels keep the conditional values.
extern "C" __global__ void guidance_combine(float* eps, const float* uncond, float scale,
                                            int batch, int c_out, int c, int hw) {
    long long i = gidx(), per = (long long)c * hw;
    if (i >= (long long)batch * per) return;
    long long b = i / per, r = i % per;
    long long o = b * c_out * (long long)hw + r;
    eps[o] = (1.0f + scale) * eps[o] - scale * uncond[o];
}

// Philox4x32-10 (schedule/noise.rs), bit for bit.
__device__ __forceinline__ void philox(u32 ctr[4], u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) { k0 += W0; k1 += W1; }
        u64 p0 = (u64)M0 * ctr[0], p1 = (u64)M1 * ctr[2];
        u32 hi0 = (u32)(p0 >> 32), lo0 = (u32)p0, hi1 = (u32)(p1 >> 32), lo1 = (u32)p1;
        u32 n0 = hi1 ^ ctr[1] ^ k0, n2 = hi0 ^ ctr[3] ^ k1;
        ctr[0] = n0; ctr[1] = lo1; ctr[2] = n2; ctr[3] = lo0;
    }
}

// GaussianNoise::fill: element j of stream s from block j / 2 (Box-Muller in f64).
// stream = stream_base + (step ? *step : 0); seed read from device memory (*seed).
extern "C" __global__ void gaussian_noise(float* out, long long n, const u64* seed,
                                          const int* step, u64 stream_base) {
    long long blk = gidx();
    if (2 * blk >= n) return;
    u64 s = *seed;
    u64 stream = stream_base + (u64)(step ? *step : 0);
    u32 ctr[4] = {(u32)blk, (u32)((u64)blk >> 32), (u32)stream, (u32)(stream >> 32)};
    philox(ctr, (u32)s, (u32)(s >> 32));
    u64 a = ((u64)ctr[0] << 32) | ctr[1];
    u64 bb = ((u64)ctr[2] << 32) | ctr[3];
    const double SCALE = 1.0 / 9007199254740992.0;  // 2^-53
    double u1 = (double)((a >> 11) + 1) * SCALE;
    double u2 = (double)(bb >> 11) * SCALE;
    double radius = sqrt(-2.0 * log(u1));
    double sn, cs;
    sincos(2.0 * 3.141592653589793 * u2, &sn, &cs);
    out[2 * blk] = (float)(radius * cs);
    if (2 * blk + 1 < n) out[2 * blk + 1] = (float)(radius * sn);
}

// torch.clamp with NaN propagated (scheduler.rs torch_clamp).
__device__ __forceinline__ double torch_clamp(double x, double lo, double hi) {
    if (isnan(x)) return x;
    double y = x < lo ? lo : x;
    return y > hi ? hi : y;
}

// Scheduler::step for DDPM and DDIM (no dynamic thresholding), in place on x (f32 NCHW), in
// f64 like the CPU. coef[step * 8 + ...]: sqrt_a, sqrt_b, then DDPM: c_x0, c_xt, std, min_log,
// max_log; DDIM: sqrt_a_prev, c_dir, std; [7]: 1 when the step draws noise.
// kind: 0 DDPM, 1 DDIM. pred: 0 epsilon, 1 sample, 2 v_prediction.
// var: 0 fixed (std from the table), 1 learned, 2 learned_range. clip: clamp x0 to +-clip_range.
// `model` is [B, stride] with stride = per (or 2 per: prediction then variance channels).
extern "C" __global__ void scheduler_step(float* x, const float* model, const float* z,
                                          const double* coef, const int* step, int kind,
                                          int pred, int var, int clip, double clip_range,
                                          int clipped_eps, long long per, long long stride,
                                          long long n) {
    long long i = gidx();
    if (i >= n) return;
    const double* c = coef + 8 * (long long)(*step);
    long long b = i / per, k = i % per;
    double xi = (double)x[i];
    double m = (double)model[b * stride + k];
    double sa = c[0], sb = c[1];
    double x0, eps;
    if (pred == 0) {
        x0 = (xi - sb * m) / sa;
        eps = m;
    } else if (pred == 1) {
        x0 = m;
        eps = (xi - sa * m) / sb;
    } else {
        x0 = sa * xi - sb * m;
        eps = sa * m + sb * xi;
    }
    if (clip) x0 = torch_clamp(x0, -clip_range, clip_range);
    bool noisy = c[7] != 0.0;
    double prev;
    if (kind == 0) {
        prev = c[2] * x0 + c[3] * xi;
        if (noisy) {
            double sd = c[4];
            if (var == 1) {
                sd = sqrt((double)model[b * stride + per + k]);
            } else if (var == 2) {
                double frac = ((double)model[b * stride + per + k] + 1.0) / 2.0;
                sd = exp(0.5 * (frac * c[6] + (1.0 - frac) * c[5]));
            }
            prev += sd * (double)z[i];
        }
    } else {
        if (clipped_eps) eps = (xi - sa * x0) / sb;
        prev = c[2] * x0 + c[3] * eps;
        if (noisy) prev += c[4] * (double)z[i];
    }
    x[i] = (float)prev;
}

extern "C" __global__ void set_step(int* step, int value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *step = value;
}

extern "C" __global__ void advance_step(int* step) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *step += 1;
}

// Op::FourierEmbedding (model::forward::fourier_embedding): diffusers' GaussianFourierProjection
// of log t (t itself when !use_log), argument and sin / cos in f64; [batch, 2 * dim], sin first
// unless flip. t = ts[(step ? *step : 0) + b * ts_per_sample].
extern "C" __global__ void fourier_embedding(const float* ts, const int* step, int ts_per_sample,
                                             const h16* w, h16* out, int batch, int dim,
                                             int use_log, int flip) {
    long long i = gidx();
    if (i >= (long long)batch * 2 * dim) return;
    int b = (int)(i / (2 * dim)), j = (int)(i % (2 * dim));
    bool first = j < dim;
    int f = first ? j : j - dim;
    double t = (double)ts[(step ? *step : 0) + b * ts_per_sample];
    double x = use_log ? log(t) : t;
    double arg = x * (double)h2f(w[f]) * 2.0 * 3.141592653589793;
    out[i] = f2h((float)((first != (flip != 0)) ? sin(arg) : cos(arg)));
}

// kernels::scalar::fir_taps: the inputs (and weights) of output o along an axis of n inputs for
// the [1, 3, 3, 1] FIR kernel, factor 2, with diffusers' upfirdn2d padding. Returns the count.
__device__ __forceinline__ int fir_taps(int up, int o, int n, int* idx, float* w) {
    int k = 0;
    int cand[4];
    float cw[4];
    int m;
    if (up) {
        int a = o / 2;
        if (o % 2 == 0) {
            cand[0] = a - 1; cw[0] = 0.25f; cand[1] = a; cw[1] = 0.75f;
        } else {
            cand[0] = a; cw[0] = 0.75f; cand[1] = a + 1; cw[1] = 0.25f;
        }
        m = 2;
    } else {
        const float kw[4] = {0.125f, 0.375f, 0.375f, 0.125f};
        for (int t = 0; t < 4; t++) { cand[t] = 2 * o + t - 1; cw[t] = kw[t]; }
        m = 4;
    }
    for (int t = 0; t < m; t++) {
        if (cand[t] >= 0 && cand[t] < n) { idx[k] = cand[t]; w[k] = cw[t]; k++; }
    }
    return k;
}

// Op::FirResample (kernels::scalar::fir_resample): factor-2 FIR up- or downsampling of NHWC
// f16, f32 sums in the CPU's tap order; one thread per output element.
extern "C" __global__ void fir_resample(const h16* in, h16* out, int batch, int c, int in_h,
                                        int in_w, int up) {
    int oh = up ? 2 * in_h : in_h / 2, ow = up ? 2 * in_w : in_w / 2;
    long long i = gidx(), n = (long long)batch * oh * ow * c;
    if (i >= n) return;
    int ch = (int)(i % c);
    long long p = i / c;
    int ox = (int)(p % ow);
    p /= ow;
    int oy = (int)(p % oh);
    long long b = p / oh;
    int iy[4], ix[4];
    float wy[4], wx[4];
    int ny = fir_taps(up, oy, in_h, iy, wy), nx = fir_taps(up, ox, in_w, ix, wx);
    float acc = 0.0f;
    for (int y = 0; y < ny; y++)
        for (int x = 0; x < nx; x++)
            acc += wy[y] * wx[x] * h2f(in[((b * in_h + iy[y]) * in_w + ix[x]) * c + ch]);
    out[i] = f2h(acc);
}

// Op::TimestepDivide: out[b] = in[b] / t[b] over `per` elements a sample (the Fourier model's
// sample / sigma). t = ts[(step ? *step : 0) + b * ts_per_sample].
extern "C" __global__ void timestep_divide(const float* ts, const int* step, int ts_per_sample,
                                           const h16* in, h16* out, int batch, long long per) {
    long long i = gidx();
    if (i >= (long long)batch * per) return;
    long long b = i / per;
    float t = ts[(step ? *step : 0) + b * ts_per_sample];
    out[i] = f2h(h2f(in[i]) / t);
}

// Op::ScaleShift (AdaGN, kernels::scalar::scale_shift): y = x * (1 + scale) + shift per sample
// and channel over NHWC x, then SiLU if `silu`; ss is [batch, 2c], scales first.
extern "C" __global__ void scale_shift(const h16* x, const h16* ss, h16* y, int batch, int hw,
                                       int c, int silu) {
    long long i = gidx(), n = (long long)batch * hw * c;
    if (i >= n) return;
    int ch = (int)(i % c);
    long long b = i / ((long long)hw * c);
    const h16* row = ss + b * 2 * c;
    float z = h2f(x[i]) * (1.0f + h2f(row[ch])) + h2f(row[c + ch]);
    y[i] = f2h(silu ? silu_f(z) : z);
}

// Op::Resample (kernels::scalar::avg_pool2 / nearest2) over NHWC x of in_h x in_w: mode 0 is a
// 2x2 average pool (window summed in row order, then divided), mode 1 a nearest 2x upsample.
extern "C" __global__ void resample2x(const h16* x, h16* y, int batch, int in_h, int in_w, int c,
                                      int mode) {
    int oh = mode == 0 ? in_h / 2 : in_h * 2, ow = mode == 0 ? in_w / 2 : in_w * 2;
    long long i = gidx(), n = (long long)batch * oh * ow * c;
    if (i >= n) return;
    int ch = (int)(i % c);
    long long p = i / c;
    int ox = (int)(p % ow), oy = (int)((p / ow) % oh);
    long long b = p / ((long long)ow * oh);
    if (mode == 0) {
        const h16* base = x + ((b * in_h + 2 * oy) * in_w + 2 * ox) * c + ch;
        long long row = (long long)in_w * c;
        float s = h2f(base[0]) + h2f(base[c]) + h2f(base[row]) + h2f(base[row + c]);
        y[i] = f2h(s / 4.0f);
    } else {
        y[i] = x[((b * in_h + oy / 2) * in_w + ox / 2) * c + ch];
    }
}

// Op::Activation (model::forward::activation): the resnets' act_fn. kind 0 silu, 1 mish
// (softplus linear above 20, as torch), 2 exact (erf) GELU, 3 relu, 4 quick_gelu (CLIP:
// x * sigmoid(1.702 x)).
extern "C" __global__ void activation(const h16* x, h16* y, long long n, int kind) {
    long long i = gidx();
    if (i >= n) return;
    float v = h2f(x[i]), r;
    if (kind == 0) {
        r = silu_f(v);
    } else if (kind == 1) {
        float sp = v > 20.0f ? v : log1pf(expf(v));
        r = v * tanhf(sp);
    } else if (kind == 2) {
        r = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    } else if (kind == 4) {
        r = v / (1.0f + expf(-1.702f * v));
    } else {
        r = fmaxf(v, 0.0f);
    }
    y[i] = f2h(r);
}
