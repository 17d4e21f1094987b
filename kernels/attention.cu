// Fused multi-head attention over [batch, tokens, channels] f16 tensors whose channels are
// split into `heads` contiguous groups of d = channels / heads (src/kernels/scalar.rs
// `attention`): out = softmax(Q K^T / sqrt(d)) V, per head.
//
// One block of 128 threads handles 16 queries of one (sample, head). Keys and values stream
// through shared memory 16 at a time; an online softmax (running max and sum per query,
// rescaling the accumulator when the max grows) means no more than one 16 x 16 tile of scores
// ever exists. Accumulation in f32; each thread owns output columns tid + 128 * j (j < 4), so
// d <= 512 (entry points attention_f16_r1 / _r2 / _r4 for d <= 128 / 256 / 512).
// Dynamic shared memory: attention_smem_bytes(d) on the host.

#define AQ 16
#define AK 16
#define AT 128

// R: output columns per thread (d <= 128 * R); one instantiation per R keeps the
// accumulator in registers.
template <int AMAXR>
__device__ __forceinline__ void attention_tile(const h16* q, const h16* k, const h16* v,
                                               h16* out, int n, int c, int heads, float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int d = c / heads;
    const int ds = d + 2;  // padded row (halves)
    h16* Qs = reinterpret_cast<h16*>(smem);
    h16* Ks = Qs + AQ * ds;
    h16* Vs = Ks + AK * ds;
    float* S = reinterpret_cast<float*>(Vs + AK * ds);  // [AQ][AK]
    float* Mx = S + AQ * AK;
    float* Lsum = Mx + AQ;
    float* Alpha = Lsum + AQ;

    const int tid = threadIdx.x;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * AQ;
    const long long base = (long long)b * n * c + (long long)h * d;

    for (int i = tid; i < AQ * d; i += AT) {
        int r = i / d, col = i - r * d;
        Qs[r * ds + col] = (q0 + r < n) ? q[base + (long long)(q0 + r) * c + col] : (h16)0;
    }
    if (tid < AQ) {
        Mx[tid] = TD_NEG_INF;
        Lsum[tid] = 0.0f;
    }
    float o[AQ][AMAXR];
#pragma unroll
    for (int r = 0; r < AQ; r++)
#pragma unroll
        for (int j = 0; j < AMAXR; j++) o[r][j] = 0.0f;

    for (int k0 = 0; k0 < n; k0 += AK) {
        __syncthreads();  // the previous tile is consumed (and Qs, Mx, Lsum are written)
        for (int i = tid; i < AK * d; i += AT) {
            int r = i / d, col = i - r * d;
            bool ok = k0 + r < n;
            long long src = base + (long long)(k0 + r) * c + col;
            Ks[r * ds + col] = ok ? k[src] : (h16)0;
            Vs[r * ds + col] = ok ? v[src] : (h16)0;
        }
        __syncthreads();
        for (int e = tid; e < AQ * AK; e += AT) {
            int r = e / AK, j = e - r * AK;
            float s = TD_NEG_INF;
            if (k0 + j < n) {
                const h16* qr = Qs + r * ds;
                const h16* kr = Ks + j * ds;
                float dot = 0.0f;
                for (int x = 0; x < d; x++) dot += h2f(qr[x]) * h2f(kr[x]);
                s = dot * scale;
            }
            S[e] = s;
        }
        __syncthreads();
        if (tid < AQ) {
            float* row = S + tid * AK;
            float mx = Mx[tid];
            for (int j = 0; j < AK; j++) mx = fmaxf(mx, row[j]);
            // mx is finite: key k0 < n always exists in this tile.
            float alpha = expf(Mx[tid] - mx);
            float sum = 0.0f;
            for (int j = 0; j < AK; j++) {
                float pj = expf(row[j] - mx);
                row[j] = pj;
                sum += pj;
            }
            Lsum[tid] = Lsum[tid] * alpha + sum;
            Mx[tid] = mx;
            Alpha[tid] = alpha;
        }
        __syncthreads();
        // Static indices only (no early exit), so o[][] stays in registers; columns past d
        // accumulate zeros and are not stored.
#pragma unroll
        for (int j = 0; j < AMAXR; j++) {
            int col = tid + AT * j;
            bool ok = col < d;
            float vcol[AK];
#pragma unroll
            for (int kk = 0; kk < AK; kk++) vcol[kk] = ok ? h2f(Vs[kk * ds + col]) : 0.0f;
#pragma unroll
            for (int r = 0; r < AQ; r++) {
                float a = o[r][j] * Alpha[r];
#pragma unroll
                for (int kk = 0; kk < AK; kk++) a += S[r * AK + kk] * vcol[kk];
                o[r][j] = a;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < AMAXR; j++) {
        int col = tid + AT * j;
#pragma unroll
        for (int r = 0; r < AQ; r++) {
            if (col < d && q0 + r < n) out[base + (long long)(q0 + r) * c + col] = f2h(o[r][j] / Lsum[r]);
        }
    }
}

#define ATTENTION_ENTRY(R)                                                                  \
    extern "C" __global__ void attention_f16_r##R(const h16* q, const h16* k, const h16* v,  \
                                                  h16* out, int n, int c, int heads,        \
                                                  float scale) {                            \
        attention_tile<R>(q, k, v, out, n, c, heads, scale);                                \
    }
ATTENTION_ENTRY(1)
ATTENTION_ENTRY(2)
ATTENTION_ENTRY(4)
