// GroupNorm over NHWC f16 activations, optionally fused with SiLU (src/kernels/scalar.rs
// `group_norm`): statistics per (sample, group) over the group's pixels and channels, in f32,
// two passes (mean, then the centered variance); y = (x - mean) * inv_std * gamma + beta.
// The input may be the two halves of the UNet skip concat (channels [0, ca) from in_a, the
// rest from in_b). One block of 256 threads per (group, sample).

#define NT 256

__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // red may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < NT / 32; w++) s += red[w];
    return s;
}

__device__ __forceinline__ float gn_load(const h16* in_a, const h16* in_b, int ca, int cb,
                                         long long pix, int ch) {
    return ch < ca ? h2f(in_a[pix * ca + ch]) : h2f(in_b[pix * cb + (ch - ca)]);
}

extern "C" __global__ void __launch_bounds__(NT) group_norm_f16(
    const h16* in_a, const h16* in_b, const h16* gamma, const h16* beta, h16* out,
    int pixels, int ca, int cb, int groups, float eps, int silu) {
    __shared__ float red[NT / 32];
    const int g = blockIdx.x, b = blockIdx.y;
    const int c = ca + cb, cpg = c / groups, c0 = g * cpg;
    const long long n = (long long)pixels * cpg;
    const long long pix0 = (long long)b * pixels;

    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += NT) {
        long long p = i / cpg;
        int ch = c0 + (int)(i - p * cpg);
        s += gn_load(in_a, in_b, ca, cb, pix0 + p, ch);
    }
    const float mean = block_sum(s, red) / (float)n;

    float v = 0.0f;
    for (long long i = threadIdx.x; i < n; i += NT) {
        long long p = i / cpg;
        int ch = c0 + (int)(i - p * cpg);
        float d = gn_load(in_a, in_b, ca, cb, pix0 + p, ch) - mean;
        v += d * d;
    }
    const float var = block_sum(v, red) / (float)n;
    const float inv_std = 1.0f / sqrtf(var + eps);

    for (long long i = threadIdx.x; i < n; i += NT) {
        long long p = i / cpg;
        int ch = c0 + (int)(i - p * cpg);
        float x = gn_load(in_a, in_b, ca, cb, pix0 + p, ch);
        float y = (x - mean) * (inv_std * h2f(gamma[ch])) + h2f(beta[ch]);
        if (silu) y = silu_f(y);
        out[(pix0 + p) * c + ch] = f2h(y);
    }
}
