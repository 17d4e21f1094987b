// Implicit-GEMM convolution on tensor cores (mma.sync m16n8k16, f16 in, f32 accumulate).
//
// GEMM view: M = batch * out_h * out_w output pixels, N = out_c, K = k * k * in_c with
// k = (ky * ksize + kx) * in_c + ci, the reduction order of the packed weights and of an NHWC
// pixel's channels (see src/kernels/mod.rs). Semantics are those of the scalar reference
// (src/kernels/scalar.rs `conv2d`):
//   out = (conv(x) + bias + channel_add[b] + residual) / out_scale
// - input split in two channel ranges (the UNet skip concat): channels [0, ca) from in_a,
//   [ca, ca + cb) from in_b, never copied;
// - stride 1 or 2 with top/left zero padding `pad_top` / `pad_left` (bottom/right follow from
//   the sizes: diffusers' asymmetric (0, 1, 0, 1) padding of Downsample2D);
// - `upsample`: the input is read as if upsampled 2x nearest (diffusers' Upsample2D folded
//   into the loads: virtual row iy reads stored row iy >> 1);
// - weights in the packed oc32 layout, f16: w[((co / 32) * K + k) * 32 + co % 32], zero
//   padded to a multiple of 32 output channels;
// - a linear layer is the same kernel with ksize 1 over `rows` pixels.
//
// Tiling: a block of 128 threads (4 warps, 2 x 2) computes a 64 x 64 output tile; each warp a
// 32 x 32 sub-tile = 2 x 4 mma tiles. K advances 32 at a time through shared memory; the next
// tile's global loads are issued into registers before the current tile is consumed.

#define BM 64
#define BN 64
#define BK 32
#define SPAD 8  // row padding (halves) of the shared tiles against bank conflicts
#define SROW (BK + SPAD)

struct ConvParams {
    const h16* in_a;
    const h16* in_b;
    const h16* weight;
    const h16* bias;
    const h16* channel_add;  // [batch, out_c] or null
    const h16* residual;     // [M, out_c] or null
    h16* out;                // [M, out_c]
    int batch, in_h, in_w, ca, cb, out_c, out_h, out_w;
    int ksize, stride, pad_top, pad_left, upsample;
    float out_scale;
    int vec;  // 1: ca % 8 == cb % 8 == 0 and 16-byte aligned inputs (8-channel vector loads)
};

__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The input element feeding output pixel m at reduction index k (0 outside the image).
__device__ __forceinline__ h16 load_a_scalar(const ConvParams& p, int m, int k, int M, int K) {
    if (m >= M || k >= K) return 0;
    int cin = p.ca + p.cb;
    int tap = k / cin, ci = k - tap * cin;
    int ky = tap / p.ksize, kx = tap - ky * p.ksize;
    int hw = p.out_h * p.out_w;
    int b = m / hw, r = m - b * hw;
    int oy = r / p.out_w, ox = r - oy * p.out_w;
    int vh = p.upsample ? 2 * p.in_h : p.in_h;
    int vw = p.upsample ? 2 * p.in_w : p.in_w;
    int iy = oy * p.stride + ky - p.pad_top;
    int ix = ox * p.stride + kx - p.pad_left;
    if (iy < 0 || iy >= vh || ix < 0 || ix >= vw) return 0;
    if (p.upsample) { iy >>= 1; ix >>= 1; }
    long long src = ((long long)b * p.in_h + iy) * p.in_w + ix;
    return ci < p.ca ? p.in_a[src * p.ca + ci] : p.in_b[src * p.cb + (ci - p.ca)];
}

// Eight consecutive reduction indices k..k+7 (one tap, one of the two inputs: vec path).
__device__ __forceinline__ uint4 load_a_vec(const ConvParams& p, int m, int k, int M, int K) {
    uint4 z = make_uint4(0, 0, 0, 0);
    if (m >= M || k >= K) return z;
    int cin = p.ca + p.cb;
    int tap = k / cin, ci = k - tap * cin;
    int ky = tap / p.ksize, kx = tap - ky * p.ksize;
    int hw = p.out_h * p.out_w;
    int b = m / hw, r = m - b * hw;
    int oy = r / p.out_w, ox = r - oy * p.out_w;
    int vh = p.upsample ? 2 * p.in_h : p.in_h;
    int vw = p.upsample ? 2 * p.in_w : p.in_w;
    int iy = oy * p.stride + ky - p.pad_top;
    int ix = ox * p.stride + kx - p.pad_left;
    if (iy < 0 || iy >= vh || ix < 0 || ix >= vw) return z;
    if (p.upsample) { iy >>= 1; ix >>= 1; }
    long long src = ((long long)b * p.in_h + iy) * p.in_w + ix;
    const h16* ptr = ci < p.ca ? p.in_a + src * p.ca + ci : p.in_b + src * p.cb + (ci - p.ca);
    return *reinterpret_cast<const uint4*>(ptr);
}

__device__ __forceinline__ uint4 load_a_chunk(const ConvParams& p, int m, int k, int M, int K) {
    if (p.vec) return load_a_vec(p, m, k, M, K);
    h16 v[8];
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = load_a_scalar(p, m, k + j, M, K);
    uint4 r;
    r.x = v[0] | ((u32)v[1] << 16);
    r.y = v[2] | ((u32)v[3] << 16);
    r.z = v[4] | ((u32)v[5] << 16);
    r.w = v[6] | ((u32)v[7] << 16);
    return r;
}

// Eight consecutive output channels co..co+7 of reduction row k (packed layout: contiguous).
__device__ __forceinline__ uint4 load_b_chunk(const ConvParams& p, int co, int k, int K,
                                              int n_padded) {
    if (k >= K || co >= n_padded) return make_uint4(0, 0, 0, 0);
    long long idx = ((long long)(co >> 5) * K + k) * 32 + (co & 31);
    return *reinterpret_cast<const uint4*>(p.weight + idx);
}

extern "C" __global__ void __launch_bounds__(128) conv2d_f16(ConvParams p) {
    __shared__ __align__(16) h16 As[BM * SROW];  // [pixel][k]
    __shared__ __align__(16) h16 Bs[BN * SROW];  // [out channel][k] (transposed on store)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, t = lane & 3;
    const int M = p.batch * p.out_h * p.out_w;
    const int K = p.ksize * p.ksize * (p.ca + p.cb);
    const int n_padded = ((p.out_c + 31) / 32) * 32;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

    // Each thread moves two 8-half chunks of A (pixel row, k8) and two of B (k row, co8).
    uint4 ra[2], rb[2];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int c = tid + i * 128;          // 0..255
            int row = c >> 2, k8 = (c & 3) * 8;  // A: 64 rows x 4 chunks
            ra[i] = load_a_chunk(p, m0 + row, k0 + k8, M, K);
            int kr = c >> 3, co8 = (c & 7) * 8;  // B: 32 k rows x 8 chunks
            rb[i] = load_b_chunk(p, n0 + co8, k0 + kr, K, n_padded);
        }
    };
    auto stash = [&]() {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int c = tid + i * 128;
            int row = c >> 2, k8 = (c & 3) * 8;
            *reinterpret_cast<uint4*>(&As[row * SROW + k8]) = ra[i];
            int kr = c >> 3, co8 = (c & 7) * 8;
            const h16* v = reinterpret_cast<const h16*>(&rb[i]);
#pragma unroll
            for (int j = 0; j < 8; j++) Bs[(co8 + j) * SROW + kr] = v[j];
        }
    };

    fetch(0);
    for (int k0 = 0; k0 < K; k0 += BK) {
        stash();
        __syncthreads();
        if (k0 + BK < K) fetch(k0 + BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 af[2][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const h16* base = &As[(wm * 32 + i * 16 + g) * SROW + kk + 2 * t];
                af[i][0] = *reinterpret_cast<const u32*>(base);
                af[i][1] = *reinterpret_cast<const u32*>(base + 8 * SROW);
                af[i][2] = *reinterpret_cast<const u32*>(base + 8);
                af[i][3] = *reinterpret_cast<const u32*>(base + 8 * SROW + 8);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const h16* base = &Bs[(wn * 32 + j * 8 + g) * SROW + kk + 2 * t];
                bf[j][0] = *reinterpret_cast<const u32*>(base);
                bf[j][1] = *reinterpret_cast<const u32*>(base + 8);
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma16816(acc[i][j], af[i], bf[j]);
        }
        __syncthreads();
    }

    // Epilogue: bias, per-(sample, channel) add, residual, output scale; f16 store.
    const int hw = p.out_h * p.out_w;
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int m = m0 + wm * 32 + i * 16 + g + half * 8;
            if (m >= M) continue;
            int b = m / hw;
#pragma unroll
            for (int j = 0; j < 4; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int n = n0 + wn * 32 + j * 8 + 2 * t + e;
                    if (n >= p.out_c) continue;
                    float v = acc[i][j][half * 2 + e] + h2f(p.bias[n]);
                    if (p.channel_add) v += h2f(p.channel_add[(long long)b * p.out_c + n]);
                    long long o = (long long)m * p.out_c + n;
                    if (p.residual) v += h2f(p.residual[o]);
                    if (p.out_scale != 1.0f) v = v / p.out_scale;
                    p.out[o] = f2h(v);
                }
            }
        }
    }
}
