// Shared by every kernels/*.cu: the host (src/cuda/kernels.rs) prepends this file to each
// source before handing it to NVRTC, so no file needs an include path or a CUDA header.
//
// f16 values are carried as raw 16-bit patterns (`h16`) and converted with PTX `cvt`, which
// keeps the sources free of cuda_fp16.h. Activations are NHWC f16, accumulation f32.

typedef unsigned short h16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float h2f(h16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ h16 f2h(float f) {
    h16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// x * sigmoid(x), as the CPU kernels' `silu`.
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

#define TD_NEG_INF __int_as_float(0xff800000)
