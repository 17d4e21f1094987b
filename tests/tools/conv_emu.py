#!/usr/bin/env python3
"""Emulates kernels/conv.cu on the CPU (numpy): every thread's tile loads, the shared-memory
layout, the per-lane mma.sync m16n8k16 fragments (PTX ISA layouts) and the epilogue, against a
direct convolution. Catches indexing bugs in the tiling without a GPU (slow: seconds per case).
Keep it in step with conv.cu when the tiling changes.  Usage: python3 tests/tools/conv_emu.py
"""
import numpy as np
BM, BN, BK, SPAD = 64, 64, 32, 8
SROW = BK + SPAD

def packed_index(o, i, tap, inp, taps):
    return ((o // 32) * taps * inp + tap * inp + i) * 32 + o % 32

def run(batch, in_h, in_w, ca, cb, out_c, k, stride, pad, upsample, seed=0):
    rng = np.random.default_rng(seed)
    cin = ca + cb
    vh, vw = (2*in_h, 2*in_w) if upsample else (in_h, in_w)
    extra = 1 if (stride == 2 and pad == 0) else 0
    out_h = (vh + 2*pad + extra - k)//stride + 1
    out_w = (vw + 2*pad + extra - k)//stride + 1
    a = rng.standard_normal((batch, in_h, in_w, ca)).astype(np.float16)
    b = rng.standard_normal((batch, in_h, in_w, cb)).astype(np.float16)
    w = (rng.standard_normal((out_c, cin, k, k)) * 0.1).astype(np.float16)
    bias = rng.standard_normal(out_c).astype(np.float16)
    chadd = rng.standard_normal((batch, out_c)).astype(np.float16)
    M = batch*out_h*out_w
    res = rng.standard_normal((M, out_c)).astype(np.float16)
    scale = 1.5
    taps = k*k
    npad = -(-out_c // 32) * 32
    packed = np.zeros(npad * cin * taps, np.float16)
    for o in range(out_c):
        for i in range(cin):
            for t in range(taps):
                packed[packed_index(o, i, t, cin, taps)] = w[o, i, t // k, t % k]
    # reference
    x = np.concatenate([a, b], axis=3).astype(np.float64)
    if upsample:
        x = x.repeat(2, axis=1).repeat(2, axis=2)
    ref = np.zeros((batch, out_h, out_w, out_c))
    for oy in range(out_h):
        for ox in range(out_w):
            for ky in range(k):
                for kx in range(k):
                    iy, ix = oy*stride+ky-pad, ox*stride+kx-pad
                    if 0 <= iy < vh and 0 <= ix < vw:
                        ref[:, oy, ox, :] += x[:, iy, ix, :] @ w[:, :, ky, kx].astype(np.float64).T
    ref = ref.reshape(M, out_c) + bias + np.repeat(chadd.astype(np.float64), out_h*out_w, axis=0) + res
    ref /= scale
    # emulation
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    K = taps*cin
    vec = (ca % 8 == 0 and cb % 8 == 0)
    def load_a_scalar(m, kk):
        if m >= M or kk >= K: return 0.0
        tap, ci = divmod(kk, cin); ky, kx = divmod(tap, k)
        hw = out_h*out_w; bb, r = divmod(m, hw); oy, ox = divmod(r, out_w)
        iy, ix = oy*stride+ky-pad, ox*stride+kx-pad
        if iy < 0 or iy >= vh or ix < 0 or ix >= vw: return 0.0
        if upsample: iy >>= 1; ix >>= 1
        src = (bb*in_h+iy)*in_w+ix
        return flat_a[src*ca+ci] if ci < ca else flat_b[src*cb+ci-ca]
    def load_a_chunk(m, kk):
        if vec:
            if m >= M or kk >= K: return np.zeros(8, np.float16)
            # vector path: same element math for 8 consecutive k (one tap, one input)
            tap, ci = divmod(kk, cin); ky, kx = divmod(tap, k)
            hw = out_h*out_w; bb, r = divmod(m, hw); oy, ox = divmod(r, out_w)
            iy, ix = oy*stride+ky-pad, ox*stride+kx-pad
            if iy < 0 or iy >= vh or ix < 0 or ix >= vw: return np.zeros(8, np.float16)
            if upsample: iy >>= 1; ix >>= 1
            src = (bb*in_h+iy)*in_w+ix
            return flat_a[src*ca+ci:src*ca+ci+8] if ci < ca else flat_b[src*cb+ci-ca:src*cb+ci-ca+8]
        return np.array([load_a_scalar(m, kk+j) for j in range(8)], np.float16)
    def load_b_chunk(co, kk):
        if kk >= K or co >= npad: return np.zeros(8, np.float16)
        idx = ((co >> 5)*K + kk)*32 + (co & 31)
        return packed[idx:idx+8]
    out = np.full((M, out_c), np.nan)
    for bx in range(-(-M//BM)):
        for by in range(-(-out_c//BN)):
            m0, n0 = bx*BM, by*BN
            acc = np.zeros((128, 2, 4, 4))
            for k0 in range(0, K, BK):
                As = np.zeros(BM*SROW, np.float16); Bs = np.zeros(BN*SROW, np.float16)
                for tid in range(128):
                    for i in range(2):
                        c = tid + i*128
                        row, k8 = c >> 2, (c & 3)*8
                        As[row*SROW+k8:row*SROW+k8+8] = load_a_chunk(m0+row, k0+k8)
                        kr, co8 = c >> 3, (c & 7)*8
                        v = load_b_chunk(n0+co8, k0+kr)
                        for j in range(8): Bs[(co8+j)*SROW+kr] = v[j]
                for tid in range(128):
                    pass
                for warp in range(4):
                    wm, wn = warp >> 1, warp & 1
                    for kk in range(0, BK, 16):
                        # per-lane fragments
                        af = np.zeros((32, 2, 4, 2), np.float16); bf = np.zeros((32, 4, 2, 2), np.float16)
                        for lane in range(32):
                            g, t = lane >> 2, lane & 3
                            for i in range(2):
                                base = (wm*32+i*16+g)*SROW + kk + 2*t
                                af[lane, i, 0] = As[base:base+2]; af[lane, i, 1] = As[base+8*SROW:base+8*SROW+2]
                                af[lane, i, 2] = As[base+8:base+10]; af[lane, i, 3] = As[base+8*SROW+8:base+8*SROW+10]
                            for j in range(4):
                                base = (wn*32+j*8+g)*SROW + kk + 2*t
                                bf[lane, j, 0] = Bs[base:base+2]; bf[lane, j, 1] = Bs[base+8:base+10]
                        for i in range(2):
                            for j in range(4):
                                # rebuild A (16x16) and B (16x8) per the PTX layouts
                                A = np.zeros((16, 16)); B = np.zeros((16, 8))
                                for lane in range(32):
                                    g, t = lane >> 2, lane & 3
                                    A[g, 2*t:2*t+2] = af[lane, i, 0]; A[g+8, 2*t:2*t+2] = af[lane, i, 1]
                                    A[g, 2*t+8:2*t+10] = af[lane, i, 2]; A[g+8, 2*t+8:2*t+10] = af[lane, i, 3]
                                    B[2*t:2*t+2, g] = bf[lane, j, 0]; B[2*t+8:2*t+10, g] = bf[lane, j, 1]
                                D = A @ B
                                for lane in range(32):
                                    g, t = lane >> 2, lane & 3
                                    tid = warp*32 + lane
                                    acc[tid, i, j, 0:2] += D[g, 2*t:2*t+2]
                                    acc[tid, i, j, 2:4] += D[g+8, 2*t:2*t+2]
            hw = out_h*out_w
            for warp in range(4):
                wm, wn = warp >> 1, warp & 1
                for lane in range(32):
                    g, t = lane >> 2, lane & 3; tid = warp*32+lane
                    for i in range(2):
                        for half in range(2):
                            m = m0 + wm*32 + i*16 + g + half*8
                            if m >= M: continue
                            bb = m // hw
                            for j in range(4):
                                for e in range(2):
                                    n = n0 + wn*32 + j*8 + 2*t + e
                                    if n >= out_c: continue
                                    v = acc[tid, i, j, half*2+e] + float(bias[n]) + float(chadd[bb, n]) + float(res[m, n])
                                    out[m, n] = v / scale
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    print(f"batch {batch} in {in_h}x{in_w} ca {ca} cb {cb} out {out_c} k {k} s {stride} pad {pad} up {upsample} vec {vec}: rel L2 {err:.2e}, nan {np.isnan(out).sum()}")
    assert err < 1e-6 and not np.isnan(out).any()

run(2, 5, 6, 8, 16, 40, 3, 1, 1, False)
run(1, 6, 6, 3, 0, 35, 3, 2, 0, False)
run(1, 3, 4, 16, 8, 70, 3, 1, 1, True)
run(3, 4, 5, 5, 3, 8, 1, 1, 0, False)
