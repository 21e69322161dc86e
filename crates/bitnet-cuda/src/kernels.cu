// The BitNet b1.58 forward pass on NVIDIA GPUs, compiled at run time by NVRTC (no headers).
//
// Layouts (packed on the host by pack.rs, documented there):
// - Ternary weights: codes w+1 in {0,1,2}, 2 bits each, in tiles of 16 rows x 128 columns; lane
//   (g = lane/4, t = lane%4) of a warp loads one uint4 per tile whose word kb holds the four
//   int8x4 registers a0..a3 of the m16n8k32 mma A fragment for k-block kb: register j is
//   (word >> 2j) & 0x03030303, row g + 8*(j&1), columns kb*32 + 16*(j>>1) + 4t .. +3.
// - Int8 activations: per token, columns permuted within each 128-column group so that lane t
//   finds the 32 bytes it needs contiguous: column kb*32 + 16*half + 4t + b sits at
//   t*32 + kb*8 + half*4 + b. Padding columns hold 0.
// Because weights are stored as w+1, sum((w+1) x) = sum(w x) + sum(x): kernels subtract the
// activation row's code sum (computed by the quantizer).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
typedef signed char i8;

#define FULL 0xffffffffu

// The kernels compile as PARTS independent modules (the host compiles them in parallel and
// caches each: `PARTS` in device.rs): BITNET_PART n (1..PARTS) keeps only the entry points of
// part n, grouped so that the parts take about equally long to compile; 0 (the default) keeps
// all of them.
#ifndef BITNET_PART
#define BITNET_PART 0
#endif
#define IN_PART(n) (BITNET_PART == 0 || BITNET_PART == (n))

// Programmatic dependent launch (sm_90+, launched so by the host): PDL_START lets the next kernel
// in the stream begin launching its blocks; PDL_WAIT blocks until every earlier kernel has
// finished and its writes are visible. Every kernel runs both first, WAIT then START, before any
// early return (a kernel that could finish without waiting would let its successor overtake its
// predecessor; starting only after the wait keeps at most one kernel ahead, resident and
// waiting), except that some kernels first request what no kernel of the step writes: products
// their weights (the staged tensor-core ones, `ternary_mma_ring_*`, their first stages; the
// staged one-token ones all of theirs, `staged` = 2; the tiled ones, `ternary_mma_tile_*`, their
// first stages), the split decode attention (`attn_split*`) its first chunk of cached keys and
// values.
#if __CUDA_ARCH__ >= 900
#define PDL_START() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_START()
#define PDL_WAIT()
#endif
#define PDL_ENTRY() \
    do {            \
        PDL_WAIT();  \
        PDL_START(); \
    } while (0)
#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Element i of a table as f32 (get), and elements i..i+3 (get4: i a multiple of 4).
struct F32T {
    typedef float T;
    static __device__ __forceinline__ float get(const float* p, size_t i) { return p[i]; }
    static __device__ __forceinline__ float4 get4(const float* p, size_t i) { return *(const float4*)(p + i); }
};
struct F16T {
    typedef u16 T;
    static __device__ __forceinline__ float get(const u16* p, size_t i) { return h2f(p[i]); }
    static __device__ __forceinline__ float4 get4(const u16* p, size_t i) {
        uint2 v = *(const uint2*)(p + i);
        return make_float4(h2f((u16)(v.x & 0xffff)), h2f((u16)(v.x >> 16)), h2f((u16)(v.y & 0xffff)), h2f((u16)(v.y >> 16)));
    }
};
struct BF16T {
    typedef u16 T;
    static __device__ __forceinline__ float get(const u16* p, size_t i) { return bf2f(p[i]); }
    static __device__ __forceinline__ float4 get4(const u16* p, size_t i) {
        uint2 v = *(const uint2*)(p + i);
        return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                           __uint_as_float(v.y & 0xffff0000u));
    }
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}
// The warp sums of NV values at once (NV a power of two, <= 32): lane l returns the sum over the
// warp of a[l >> (5 - log2 NV)]. Each exchange step (offset O, K values left) sends the half of
// its values a lane does not keep (NV - 1 shuffles in all, instead of 5 per value); the steps
// pair lanes as warp_sum does, in the same order, so every sum is bit for bit warp_sum's. One
// template per step: every array index is a constant, and the array stays in registers.
template <int K, int O>
struct SumScatter {
    template <int NV>
    static __device__ __forceinline__ float run(float (&a)[NV], int lane) {
        bool up = lane & O;
#pragma unroll
        for (int t = 0; t < K / 2; t++) {
            float x = a[t], y = a[t + K / 2];
            float keep = up ? y : x, send = up ? x : y;
            a[t] = keep + __shfl_xor_sync(FULL, send, O);
        }
        return SumScatter<K / 2, O / 2>::run(a, lane);
    }
};
template <int O>
struct SumScatter<1, O> {
    template <int NV>
    static __device__ __forceinline__ float run(float (&a)[NV], int) {
        float v = a[0];
#pragma unroll
        for (int o = O; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
        return v;
    }
};
template <int NV>
__device__ __forceinline__ float warp_sum_scatter(float (&a)[NV]) {
    return SumScatter<NV, 16>::run(a, threadIdx.x & 31);
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}
__device__ __forceinline__ int warp_isum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 (<= 1024). `red` holds 32 values.
// WARPS: the block's warps where known at compile time (the second level then unrolls into a
// few shared-memory loads; ncu counted ~40 instructions for the run-time loop), 0 to read
// blockDim. The same summation order either way. LEAD = false (block_max, block_isum) skips the
// barrier that keeps the warps' writes from overtaking earlier reads of `red`: for a reduction
// into slots that every warp last read before a barrier it has since passed (e.g. right after
// another reduction into other slots).
template <int WARPS = 0>
__device__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = WARPS ? WARPS : blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = 0.f;
#pragma unroll
    for (int i = 0; i < (WARPS ? WARPS : nw); i++) r += red[i];
    return r;
}
template <int WARPS = 0, bool LEAD = true>
__device__ float block_max(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = WARPS ? WARPS : blockDim.x >> 5;
    v = warp_max(v);
    if (LEAD) __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = 0.f;
#pragma unroll
    for (int i = 0; i < (WARPS ? WARPS : nw); i++) r = fmaxf(r, red[i]);
    return r;
}
template <int WARPS = 0, bool LEAD = true>
__device__ int block_isum(int v, int* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = WARPS ? WARPS : blockDim.x >> 5;
    v = warp_isum(v);
    if (LEAD) __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int r = 0;
#pragma unroll
    for (int i = 0; i < (WARPS ? WARPS : nw); i++) r += red[i];
    return r;
}

__device__ __forceinline__ int perm_col(int c) {
    int w = c & 127;
    return (c & ~127) + ((w >> 2) & 3) * 32 + (w >> 5) * 8 + ((w >> 4) & 1) * 4 + (w & 3);
}

// ---------------------------------------------------------------------------------------------
// Embedding lookup: h[r] = table[tokens[r]] as f32. Rows of a multiple of 4 values: 4 at a time,
// a thread's loads of up to 16 values issued before their stores (the element loop took ~5 us
// for a 2,560-wide row: a chain of round trips).
template <class D>
__device__ void embed_body(const typename D::T* table, const u32* tokens, float* h, int cols) {
    PDL_ENTRY();
    int r = blockIdx.x;
    size_t base = (size_t)tokens[r] * cols;
    float* out = h + (size_t)r * cols;
    if ((cols & 3) == 0) {
        int n4 = cols / 4;
        for (int j0 = threadIdx.x; j0 < n4; j0 += 4 * blockDim.x) {
            float4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int j = j0 + u * blockDim.x;
                if (j < n4) v[u] = D::get4(table, base + 4 * (size_t)j);
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int j = j0 + u * blockDim.x;
                if (j < n4) ((float4*)out)[j] = v[u];
            }
        }
        return;
    }
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[c] = D::get(table, base + c);
}
#if IN_PART(1)
extern "C" __global__ void embed_f32(const float* t, const u32* tok, float* h, int cols) { embed_body<F32T>(t, tok, h, cols); }
extern "C" __global__ void embed_f16(const u16* t, const u32* tok, float* h, int cols) { embed_body<F16T>(t, tok, h, cols); }
extern "C" __global__ void embed_bf16(const u16* t, const u32* tok, float* h, int cols) { embed_body<BF16T>(t, tok, h, cols); }
#endif

// ---------------------------------------------------------------------------------------------
// RMSNorm, then int8 quantization (model.md): one block per row. `mode` 0 normalizes x itself;
// 1 and 2 first form act(gate) * up from a row holding gate | up (relu2, silu).
// Writes permuted codes (kpad per row), the scale s_x and the code sum.
__device__ __forceinline__ float glu_act(float g, int mode) {
    if (mode == 1) {
        float r = fmaxf(g, 0.f);
        return r * r;
    }
    return g / (1.f + expf(-g));
}
// A gate/up product's row holds gate and up interleaved in groups of 8 (`DevTernary::upload_glu`
// in model/linear.rs: each 16-row strip is 8 gate rows, then the same 8 up rows), so that one block's
// strip has both halves of its outputs' act(gate) * up (`store_glu` forms them where asked).
__device__ __forceinline__ int glu_gate(int c) { return (c >> 3) * 16 + (c & 7); }
__device__ __forceinline__ float glu_in(const float* x, int c, int cols, int mode) {
    if (mode == 0) return x[c];
    int g = glu_gate(c);
    return glu_act(x[g], mode) * x[g + 8];
}

// Rows wider than the fused kernel's register path: one strided loop per pass. With `cached`,
// the input row (act(gate) * up for the FFN) is formed once into dynamic shared memory (cols
// floats); otherwise it is recomputed in each of the three passes.
__device__ void norm_quant_wide(const float* x, int x_stride, const float* w, int cols, int kpad, float eps,
                                int mode, i8* codes, float* scales, int* xsums, int cached, float* red, int* ired,
                                float* row) {
    int r = blockIdx.x;
    const float* xr = x + (size_t)r * x_stride;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = glu_in(xr, c, cols, mode);
        if (cached) row[c] = v;
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    float mx = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = w[c] * ((cached ? row[c] : glu_in(xr, c, cols, mode)) * inv);
        if (cached) row[c] = v;
        mx = fmaxf(mx, fabsf(v));
    }
    mx = block_max(mx, red);
    float scale = 127.0f / fmaxf(mx, 1e-5f);
    int sum = 0;
    i8* out = codes + (size_t)r * kpad;
    for (int c = threadIdx.x; c < kpad; c += blockDim.x) {
        int q = 0;
        if (c < cols) {
            float v = cached ? row[c] : w[c] * (glu_in(xr, c, cols, mode) * inv);
            float f = fminf(fmaxf(rintf(v * scale), -128.f), 127.f);
            q = (int)f;
        }
        out[perm_col(c)] = (i8)q;
        sum += q;
    }
    sum = block_isum(sum, ired);
    if (threadIdx.x == 0) {
        scales[r] = scale;
        xsums[r] = sum;
    }
}

// Final RMSNorm of the rows whose logits are wanted: out[i] = norm(h[rows[i]]). Rows of a
// multiple of 4 values, up to 16 per thread, are read 4 at a time; with HOIST (the final_norm
// kernel) all of a thread's loads are issued at once and the row stays in registers (two strided
// loops took ~10 us for a 2,560-wide row: a chain of round trips); without (the persistent
// step, at its register limit) one group at a time, the same sums in the same order.
template <bool HOIST>
__device__ void final_norm_row(const float* xr, const float* w, int cols, float eps, float* out, float* red) {
    if ((cols & 3) == 0 && cols <= 16 * (int)blockDim.x) {
        const int U = HOIST ? 4 : 1;
        const float4 *x4 = (const float4*)xr, *w4 = (const float4*)w;
        int n4 = cols / 4;
        float4 x[U], g[U];
        float ss = 0.f;
#pragma unroll(U)
        for (int u = 0; u < 4; u++) {
            int j = threadIdx.x + u * blockDim.x;
            if (j < n4) {
                float4 a = x4[j];
                if (HOIST) {
                    x[u % U] = a;
                    g[u % U] = w4[j];
                }
                ss += a.x * a.x;
                ss += a.y * a.y;
                ss += a.z * a.z;
                ss += a.w * a.w;
            }
        }
        ss = block_sum(ss, red);
        float inv = 1.0f / sqrtf(ss / (float)cols + eps);
#pragma unroll(U)
        for (int u = 0; u < 4; u++) {
            int j = threadIdx.x + u * blockDim.x;
            if (j < n4) {
                float4 a = HOIST ? x[u % U] : x4[j], b = HOIST ? g[u % U] : w4[j];
                ((float4*)out)[j] = make_float4(b.x * (a.x * inv), b.y * (a.y * inv), b.z * (a.z * inv), b.w * (a.w * inv));
            }
        }
        return;
    }
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[c] = w[c] * (xr[c] * inv);
}
#if IN_PART(1)
extern "C" __global__ void final_norm(const float* h, const u32* rows, const float* w, int cols, float eps,
                                      float* out) {
    PDL_ENTRY();
    __shared__ float red[32];
    final_norm_row<true>(h + (size_t)rows[blockIdx.x] * cols, w, cols, eps, out + (size_t)blockIdx.x * cols, red);
}
#endif

// ---------------------------------------------------------------------------------------------
// Ternary x int8 products. One block of 4 warps per 16-row strip; the warps split the 128-column
// groups. Epilogue: y = (acc - xsum) / s_x * s_w[row], stored or added into `out`
// (out[t * out_stride + row]).
// (A macro, not a function: the operands' loads stay where each caller's expression puts them,
// so the kernels' machine code is what it was before this was shared.)
#define DEQUANT(acc, xsum, xscale, wscale) ((float)((acc) - (xsum)) / (xscale) * (wscale))
__device__ __forceinline__ float out_value(int acc, int t, int row, const int* xsum, const float* xscale,
                                           const float* wscale) {
    return DEQUANT(acc, xsum[t], xscale[t], wscale[row]);
}
__device__ __forceinline__ void store_value(float* out, int out_stride, int t, int row, float y, int accumulate) {
    float* p = out + (size_t)t * out_stride + row;
    if (accumulate) *p += y; else *p = y;
}
__device__ __forceinline__ void store_out(float* out, int out_stride, int t, int row, int rows, int acc,
                                          const int* xsum, const float* xscale, const float* wscale,
                                          int accumulate) {
    if (row >= rows) return;
    store_value(out, out_stride, t, row, out_value(acc, t, row, xsum, xscale, wscale), accumulate);
}

// The output of an interleaved gate/up product (`glu_in`) where `glu` (an activation mode) asks
// for act(gate) * up: gate row `row` (one of the first 8 of its strip) and its up row 8 further,
// stored at column (row / 16) * 8 + row % 16.
__device__ __forceinline__ void store_glu_value(float* out, int out_stride, int t, int row, float g, float u, int glu) {
    store_value(out, out_stride, t, (row >> 4) * 8 + (row & 15), glu_act(g, glu) * u, 0);
}
__device__ __forceinline__ void store_glu(float* out, int out_stride, int t, int row, int gate, int up,
                                          const int* xsum, const float* xscale, const float* wscale, int glu) {
    float g = out_value(gate, t, row, xsum, xscale, wscale), u = out_value(up, t, row + 8, xsum, xscale, wscale);
    store_glu_value(out, out_stride, t, row, g, u, glu);
}

// Warps per block of the ternary kernels (they split the 128-column groups of one strip).
#define NW 8

// Asynchronous 16-byte copies global -> shared (to a shared-space address), their groups and
// the wait until at most N groups are in flight (sm_80+; before that, a plain load and store).
__device__ __forceinline__ void cp_async16_s(u32 smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem), "l"(gmem) : "memory");
#else
    uint4 v = __ldg((const uint4*)gmem);
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(smem), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// A 16-byte cp.async issued only where `on` (a predicate, not a branch; sm_80+).
__device__ __forceinline__ void cp_async16_if(u32 smem, const void* gmem, bool on) {
#if __CUDA_ARCH__ >= 800
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\t@p cp.async.cg.shared.global [%0], [%1], 16;\n\t}" ::"r"(smem),
                 "l"(gmem), "r"((int)on)
                 : "memory");
#else
    if (on) cp_async16_s(smem, gmem);
#endif
}
// A 16-byte cp.async that asks L2 to fetch the 256 bytes around it (for rows read 64 bytes at a
// time; sm_80+).
__device__ __forceinline__ void cp_async16_l2(u32 smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(smem), "l"(gmem) : "memory");
#else
    cp_async16_s(smem, gmem);
#endif
}
// A 16-byte load from shared memory at a shared-space address (kept in order with the barriers).
__device__ __forceinline__ uint4 ld_shared_v4(u32 a) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
    return v;
}

// Thread-block clusters (sm_90): a barrier of every thread of the cluster (writes to shared
// memory before it are visible to every block after it), and a load from the shared memory of
// block `rank` of the cluster at the place of `p` in this block's.
__device__ __forceinline__ void cluster_sync() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// The same barrier without ordering memory (no fence): for a block that has nothing to publish,
// or whose loads from the others have all returned.
__device__ __forceinline__ void cluster_sync_relaxed() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ float cluster_load(const float* p, int rank) {
#if __CUDA_ARCH__ >= 900
    u32 a = (u32)__cvta_generic_to_shared(p), ra;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(ra) : "memory");
    return v;
#else
    return p[0];
#endif
}

// Batch 1..4 with dp4a (CUDA cores): each weight register is used for every token. Each warp
// issues up to four 16-byte weight loads before using any, to keep enough bytes in flight.
template <int MAXT>
__device__ __forceinline__ void gemv_group(const uint4& wv, int q, int tq, const i8* __restrict__ codes, int kpad,
                                           int T, int (&acc)[MAXT][2]) {
    u32 wk[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int t = 0; t < MAXT; t++) {
        if (t < T) {
            // Global or shared memory (the fused kernel), hence no __ldg.
            const uint4* xp = (const uint4*)(codes + (size_t)t * kpad + q * 128 + tq * 32);
            uint4 x0 = xp[0], x1 = xp[1];
            u32 xk[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
            for (int kb = 0; kb < 4; kb++) {
                u32 w = wk[kb];
                int a0 = (int)(w & 0x03030303u), a1 = (int)((w >> 2) & 0x03030303u);
                int a2 = (int)((w >> 4) & 0x03030303u), a3 = (int)((w >> 6) & 0x03030303u);
                acc[t][0] = __dp4a(a0, (int)xk[kb * 2], acc[t][0]);
                acc[t][0] = __dp4a(a2, (int)xk[kb * 2 + 1], acc[t][0]);
                acc[t][1] = __dp4a(a1, (int)xk[kb * 2], acc[t][1]);
                acc[t][1] = __dp4a(a3, (int)xk[kb * 2 + 1], acc[t][1]);
            }
        }
    }
}

// PRE: the caller already loaded this warp's first four weight vectors into `pre` (the fused
// kernel issues them before normalizing, to hide their latency).
// SMEMW: `W` is the strip's copy in shared memory (the persistent step's staged weights).
template <int MAXT, bool PRE, bool SMEMW = false>
__device__ void gemv_body(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows, int kgroups,
                          const i8* __restrict__ codes, int kpad, const float* __restrict__ xscale,
                          const int* __restrict__ xsum, int T, float* out, int out_stride, int accumulate,
                          const uint4 (&pre)[4], int strip) {
    __shared__ int red[NW][MAXT][16];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int acc[MAXT][2];
#pragma unroll
    for (int t = 0; t < MAXT; t++) acc[t][0] = acc[t][1] = 0;
    const uint4* ws = (SMEMW ? W : W + (size_t)strip * kgroups * 32) + lane;
    for (int base = warp; base < kgroups; base += 4 * NW) {
        uint4 wv[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int q = base + j * NW;
            if (PRE && base == warp) wv[j] = pre[j];
            else if (SMEMW) wv[j] = q < kgroups ? ws[(size_t)q * 32] : make_uint4(0, 0, 0, 0);
            else wv[j] = q < kgroups ? __ldg(ws + (size_t)q * 32) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int q = base + j * NW;
            if (q < kgroups) gemv_group<MAXT>(wv[j], q, tq, codes, kpad, T, acc);
        }
    }
#pragma unroll
    for (int t = 0; t < MAXT; t++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            int v = acc[t][j];
            v += __shfl_xor_sync(FULL, v, 1);
            v += __shfl_xor_sync(FULL, v, 2);
            if (tq == 0) red[warp][t][g + 8 * j] = v;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < MAXT * 16; i += blockDim.x) {
        int t = i / 16, rr = i % 16;
        if (t < T) {
            int v = 0;
#pragma unroll
            for (int w = 0; w < NW; w++) v += red[w][t][rr];
            store_out(out, out_stride, t, strip * 16 + rr, rows, v, xsum, xscale, wscale, accumulate);
        }
    }
}

// `glu` is the tensor-core kernels' (below); the host never asks this one for it.
#if IN_PART(1)
extern "C" __global__ void __launch_bounds__(NW * 32) ternary_gemv(const uint4* W, const float* wscale, int rows,
                                                                    int kgroups, const i8* codes, int kpad,
                                                                    const float* xscale, const int* xsum, int T,
                                                                    float* out, int out_stride, int accumulate,
                                                                    int glu) {
    PDL_ENTRY();
    const uint4 none[4] = {};
    gemv_body<4, false>(W, wscale, rows, kgroups, codes, kpad, xscale, xsum, T, out, out_stride, accumulate, none,
                        blockIdx.x);
}
#endif

// Decode (1..4 tokens; the engine takes it for one, `fused_norm` in model/linear.rs, the
// conformance suite for up to four): RMSNorm + quantization of the input rows fused into the
// dp4a product. Every block normalizes the rows itself (they are small and sit in L2) into
// shared memory, so a step needs no separate norm kernel. Rows up to FUSED_MAX_COLS wide (values held in registers).
// The grid is at most one wave: each block takes strips blockIdx.x, + gridDim.x, ... so that
// the normalization is paid once per block, and the next strip's first weights are in flight
// while the current one is multiplied.
__device__ __forceinline__ void gemv_prefetch(const uint4* __restrict__ W, int kgroups, int strip, int strips,
                                              uint4 (&pre)[4]) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint4* ws = W + (size_t)strip * kgroups * 32 + lane;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int q = warp + j * NW;
        pre[j] = (strip < strips && q < kgroups) ? __ldg(ws + (size_t)q * 32) : make_uint4(0, 0, 0, 0);
    }
}
#define FUSED_PER_THREAD 28
#define FUSED_MAX_COLS (FUSED_PER_THREAD * NW * 32)
// The input row's values of this thread (columns threadIdx.x + j * NW * 32), act(gate) * up
// formed in place for modes 1 and 2; one loop per mode, so no element pays for the others.
template <int PER, int MODE>
__device__ __forceinline__ void norm_load(const float* xr, int cols, float (&v)[PER]) {
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int c = threadIdx.x + j * NW * 32;
        v[j] = c < cols ? glu_in(xr, c, cols, MODE) : 0.f;
    }
}
// RMSNorm and int8 quantization of one row by the whole block (NW * 32 threads) into shared
// memory: permuted codes xs[0..kpad), the scale and the code sum (written by thread 0). PER
// values per thread (PER * NW * 32 >= kpad): instantiated per row width, because the loops
// are unrolled and predicated, and at 28 values a 2,560-wide row spent most of the fused
// kernel's instructions on columns that do not exist (ncu). Any PER gives the same codes.
// PRE: the norm weights are loaded with the row (before the first reduction, not after it).
// ATOM: the code sum is added into *xsum (zeroed by the caller before a block barrier) by one
// atomic per warp instead of a third block reduction; it is complete after the caller's next
// barrier (integer sums: the same value in any order).
// `issued()` runs once the row's loads are issued, before any is used (the staged product
// issues its weight copies there, behind the row's loads rather than ahead of them).
struct NoIssue {
    __device__ void operator()() const {}
};
template <int PER, bool PRE = false, bool ATOM = false, class F = NoIssue>
__device__ __forceinline__ void norm_quant_regs(const float* xr, const float* __restrict__ nw, int cols, int kpad,
                                                float eps, int mode, i8* xs, float* xscale, int* xsum,
                                                float* red, int* ired, F issued = F()) {
    float v[PER];
    float g[PRE ? PER : 1];
    if (PRE) {
#pragma unroll
        for (int j = 0; j < PER; j++) {
            int c = threadIdx.x + j * NW * 32;
            g[j] = c < cols ? nw[c] : 0.f;
        }
    }
    if (mode == 0) norm_load<PER, 0>(xr, cols, v);
    else if (mode == 1) norm_load<PER, 1>(xr, cols, v);
    else norm_load<PER, 2>(xr, cols, v);
    issued();
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < PER; j++) ss += v[j] * v[j];
    ss = block_sum<NW>(ss, red);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    float mx = 0.f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int c = threadIdx.x + j * NW * 32;
        if (c < cols) {
            v[j] = (PRE ? g[PRE ? j : 0] : nw[c]) * (v[j] * inv);
            mx = fmaxf(mx, fabsf(v[j]));
        }
    }
    mx = block_max<NW, false>(mx, red + 16);  // the sum used slots 0..7
    float scale = 127.0f / fmaxf(mx, 1e-5f);
    int sum = 0;
    // perm_col(threadIdx.x + j * NW * 32) = perm_col(threadIdx.x) + j * NW * 32 (the permutation
    // works within 128-column groups). Every thread stores all PER codes, zeros from column
    // `cols` on, without a branch: with one per value (`c < kpad`) the compiler recomputed the
    // address in each (ncu: ~24 instructions per value instead of ~8). Stores past kpad stay
    // inside the caller's PER * NW * 32 bytes per row; a next row's codes, written later,
    // overwrite them.
    i8* xt = xs + perm_col(threadIdx.x);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int c = threadIdx.x + j * NW * 32;
        int q = c < cols ? (int)fminf(fmaxf(rintf(v[j] * scale), -128.f), 127.f) : 0;
        xt[j * NW * 32] = (i8)q;
        sum += q;
    }
    for (int c = threadIdx.x + PER * NW * 32; c < kpad; c += NW * 32) xs[perm_col(c)] = 0;
    if (ATOM) {
        sum = warp_isum(sum);
        if ((threadIdx.x & 31) == 0) atomicAdd(xsum, sum);
        if (threadIdx.x == 0) *xscale = scale;
        return;
    }
    sum = block_isum<NW, false>(sum, ired);
    if (threadIdx.x == 0) {
        *xscale = scale;
        *xsum = sum;
    }
}
__device__ __forceinline__ void norm_quant_smem(const float* xr, const float* __restrict__ nw, int cols, int kpad,
                                                float eps, int mode, i8* xs, float* xscale, int* xsum,
                                                float* red, int* ired) {
    norm_quant_regs<FUSED_PER_THREAD>(xr, nw, cols, kpad, eps, mode, xs, xscale, xsum, red, ired);
}

// The row widths the register path is instantiated for (values per thread; the host picks the
// smallest that holds the row: `ByWidth::for_cols` in model/linear.rs).
#define FOR_EACH_PER(X) X(4) X(8) X(10) X(12) X(16) X(20) X(28)

// RMSNorm + int8 quantization, one block of NW * 32 threads per row. Rows up to PER * NW * 32
// wide go through the fused decode kernel's register path (every load of the row issued before
// any use: one memory round trip instead of one per loop step, ncu: 10-25 us -> a few us per
// launch), so both give the same codes by construction; wider rows (PER 28 only) take the
// strided loops.
template <int PER>
__device__ void norm_quant_body(const float* x, int x_stride, const float* w, int cols, int kpad, float eps, int mode,
                                i8* codes, float* scales, int* xsums, int cached) {
    PDL_ENTRY();
    __shared__ float red[32];
    __shared__ int ired[32];
    __shared__ __align__(16) i8 xs[PER * NW * 32];
    extern __shared__ float row[];
    __shared__ int total;
    int r = blockIdx.x;
    if (cols > PER * NW * 32) {
        norm_quant_wide(x, x_stride, w, cols, kpad, eps, mode, codes, scales, xsums, cached, red, ired, row);
        return;
    }
    // As the fused decode kernel: the norm weights load with the row (up to 12 values per
    // thread, and at 28: the 6,912-wide down row of batched steps, one block per row, where the
    // registers cost no occupancy: 64 -> 106) and the code sum goes by one shared-memory atomic
    // per warp (zeroed here; the sum's barriers order it before the atomics), not a third block
    // reduction.
    if (threadIdx.x == 0) total = 0;
    constexpr bool PRE = PER <= 12 || PER >= 28;
    norm_quant_regs<PER, PRE, true>(x + (size_t)r * x_stride, w, cols, kpad, eps, mode, xs, scales + r, &total, red,
                                    ired);
    __syncthreads();
    if (threadIdx.x == 0) xsums[r] = total;
    uint4* out = (uint4*)(codes + (size_t)r * kpad);
    for (int i = threadIdx.x; i < kpad / 16; i += blockDim.x) out[i] = ((const uint4*)xs)[i];
}
#define NORM_QUANT(P)                                                                                            \
    extern "C" __global__ void __launch_bounds__(NW * 32)                                                        \
        norm_quant_p##P(const float* x, int x_stride, const float* w, int cols, int kpad, float eps, int mode,   \
                        i8* codes, float* scales, int* xsums, int cached) {                                      \
        norm_quant_body<P>(x, x_stride, w, cols, kpad, eps, mode, codes, scales, xsums, cached);                 \
    }
#if IN_PART(1)
FOR_EACH_PER(NORM_QUANT)
#endif

// The block's strips (first, + stride, ...) of a T-token product whose codes sit in shared
// memory; `pre` holds the first strip's first weights and, on return, the weights of the strip
// after the last (none: zeros).
template <int MAXT>
__device__ __forceinline__ void gemv_strips(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows,
                                            int kgroups, const i8* xs, int kpad, const float* xscale,
                                            const int* xsum, int T, float* out, int out_stride, int accumulate,
                                            uint4 (&pre)[4], int first, int stride) {
    int strips = (rows + 15) / 16;
    if (MAXT == 1 && first + stride >= strips) {
        // One strip for this block (most one-token products: a grid of one wave covers them):
        // no next strip to fetch. (Not for MAXT 4: its second copy of the product took ptxas
        // from 80 to 100 registers, a third fewer blocks per wave.)
        if (first < strips)
            gemv_body<MAXT, true>(W, wscale, rows, kgroups, xs, kpad, xscale, xsum, T, out, out_stride, accumulate,
                                  pre, first);
        return;
    }
    for (int strip = first; strip < strips; strip += stride) {
        uint4 cur[4] = {pre[0], pre[1], pre[2], pre[3]};
        gemv_prefetch(W, kgroups, strip + stride, strips, pre);
        gemv_body<MAXT, true>(W, wscale, rows, kgroups, xs, kpad, xscale, xsum, T, out, out_stride, accumulate,
                              cur, strip);
        __syncthreads();  // `red` is reused by the next strip
    }
}

// The products of a block's staged strips (blockIdx.x, + gridDim.x, ..., at most STAGE_MAX,
// in shared memory at `ws`): warp w takes groups w, w + NW, ... of every strip, and the sums of
// all the strips meet in shared memory at one barrier, so a block's strips are one chain, not
// one chain each (gate/up: 3 strips per block). `glu` (1, 2: the activation, as `glu_act`): the
// rows are interleaved gate/up (`glu_in`), and output c = strip * 8 + r is act(gate row r) * up
// row r of the strip, so that the next product's norm reads one row instead of two.
#define STAGE_MAX 4
template <int MAXT>
__device__ void gemv_staged(const uint4* ws, const float* __restrict__ wscale, int rows, int kgroups,
                            const i8* xs, int kpad, const float* xscale, const int* xsum, int T, float* out,
                            int out_stride, int accumulate, int glu) {
    __shared__ int sred[NW][STAGE_MAX][MAXT][16];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int strips = (rows + 15) / 16;
    int ns = (strips - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
    int acc[STAGE_MAX][MAXT][2];
#pragma unroll
    for (int n = 0; n < STAGE_MAX; n++) {
#pragma unroll
        for (int t = 0; t < MAXT; t++) acc[n][t][0] = acc[n][t][1] = 0;
        if (n < ns) {
            const uint4* w = ws + (size_t)n * kgroups * 32 + lane;
#pragma unroll 4
            for (int q = warp; q < kgroups; q += NW) gemv_group<MAXT>(w[q * 32], q, tq, xs, kpad, T, acc[n]);
        }
    }
#pragma unroll
    for (int n = 0; n < STAGE_MAX; n++) {
#pragma unroll
        for (int t = 0; t < MAXT; t++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                int v = acc[n][t][j];
                v += __shfl_xor_sync(FULL, v, 1);
                v += __shfl_xor_sync(FULL, v, 2);
                if (tq == 0 && n < ns) sred[warp][n][t][g + 8 * j] = v;
            }
        }
    }
    __syncthreads();
    auto sum = [&](int n, int t, int rr) {
        int v = 0;
#pragma unroll
        for (int w = 0; w < NW; w++) v += sred[w][n][t][rr];
        return v;
    };
    int per = glu ? 8 : 16;
    for (int i = threadIdx.x; i < ns * MAXT * per; i += blockDim.x) {
        int n = i / (MAXT * per), t = i / per % MAXT, rr = i % per;
        int strip = blockIdx.x + n * gridDim.x, row = strip * 16 + rr;
        if (t >= T) continue;
        if (!glu) {
            store_out(out, out_stride, t, row, rows, sum(n, t, rr), xsum, xscale, wscale, accumulate);
        } else if (row < rows) {
            store_glu(out, out_stride, t, row, sum(n, t, rr), sum(n, t, rr + 8), xsum, xscale, wscale, glu);
        }
    }
}

// Up to 12 values per thread (3,072 columns) the norm weights load with the row and the first
// strip's weight loads go to registers before normalizing (ptxas: 80 registers, no spill; with
// 28 values the early loads spilled to the stack, whose store then waited for the DRAM load).
// The code sum always goes by per-warp atomics. MAXT: most tokens (1, or up to 4): one-token
// steps take their own instantiation, whose reductions and epilogue do a quarter of the work.
//
// `staged` (the host sets it where the block's strips fit its shared memory: `gemv_stage` in
// model/linear.rs; at most STAGE_MAX of them): every strip of the block (blockIdx.x, + gridDim.x, ...)
// is copied whole into dynamic shared memory by cp.async, issued right behind the first row's
// loads (ahead of them, the row waited behind the copies: gate/up 9.7 us instead of 8.3), so all
// of the launch's weight loads are in flight while the rows are normalized, and the products
// read them from shared memory as one chain (`gemv_staged`). Without it a block's later strips
// (gate/up: 2-3 per block) and a wide strip's later groups (down: 54 per strip, 4 per warp in
// flight) each waited a memory round trip after the norm. ncu at one row (session 14): gate/up
// 10.0 -> 8.3 us, down 11.4 -> 10.4 (8.0 once gate/up formed act(gate) * up), qkv and o level;
// the register path stays for strips that do not fit.
template <int PER, int MAXT>
__device__ void gemv_norm_body(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows, int kgroups,
                               const float* __restrict__ x, int x_stride, const float* __restrict__ nw, int cols,
                               int kpad, float eps, int mode, int T, float* out, int out_stride, int accumulate,
                               int staged, int glu) {
    __shared__ __align__(16) i8 xs[MAXT * PER * NW * 32];
    __shared__ float xscale[MAXT];
    __shared__ int xsum[MAXT];
    __shared__ float red[32];
    __shared__ int ired[32];
    extern __shared__ __align__(16) uint4 gemv_smem[];
    int strips = (rows + 15) / 16;
    if (staged) {
        // The norm weights load with the row where that keeps the blocks per SM: up to 12 values
        // per thread, and the widest one-row instantiation (105 -> 126 registers, two blocks per
        // SM either way; the down product's 6,912-wide row: ncu's source view had 9% of its
        // stall samples on the weights loaded after the first reduction).
        constexpr bool PRE = PER <= 12 || (MAXT == 1 && PER >= 28);
        if (threadIdx.x < MAXT) xsum[threadIdx.x] = 0;
        auto stage_all = [&]() {
            u32 base = (u32)__cvta_generic_to_shared(gemv_smem);
            int words = kgroups * 32;  // 16-byte words of a strip
            for (int strip = blockIdx.x, n = 0; strip < strips; strip += gridDim.x, n++)
                for (int i = threadIdx.x; i < words; i += blockDim.x)
                    cp_async16_s(base + (u32)(n * words + i) * 16, W + (size_t)strip * words + i);
            cp_async_commit();
        };
        // staged == 2 (launched with PDL): the weights do not depend on the previous kernel, so
        // they are all requested before the wait, while it still runs.
        if (staged == 2) stage_all();
        PDL_WAIT();
        PDL_START();
        for (int t = 0; t < (MAXT == 1 ? 1 : T); t++) {
            auto stage = [&]() {
                if (t == 0 && staged == 1) stage_all();
            };
            norm_quant_regs<PER, PRE, true>(x + (size_t)t * x_stride, nw, cols, kpad, eps, mode, xs + t * kpad,
                                            xscale + t, xsum + t, red, ired, stage);
        }
        cp_async_wait<0>();
        __syncthreads();
        gemv_staged<MAXT>(gemv_smem, wscale, rows, kgroups, xs, kpad, xscale, xsum, MAXT == 1 ? 1 : T, out,
                          out_stride, accumulate, glu);
        return;
    }
    constexpr bool NARROW = PER <= 12;
    // The first strip's weights into L2 while the rows are normalized.
    if (blockIdx.x < strips) {
        const char* first = (const char*)(W + (size_t)blockIdx.x * kgroups * 32);
        for (int i = threadIdx.x; i < kgroups * 4; i += blockDim.x)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(first + (size_t)i * 128));
    }
    uint4 pre[4];
    if (NARROW) gemv_prefetch(W, kgroups, blockIdx.x, strips, pre);
    if (threadIdx.x < MAXT) xsum[threadIdx.x] = 0;
    PDL_WAIT();
    PDL_START();
    for (int t = 0; t < (MAXT == 1 ? 1 : T); t++)
        norm_quant_regs<PER, NARROW, true>(x + (size_t)t * x_stride, nw, cols, kpad, eps, mode, xs + t * kpad,
                                           xscale + t, xsum + t, red, ired);
    if (!NARROW) gemv_prefetch(W, kgroups, blockIdx.x, strips, pre);
    __syncthreads();
    gemv_strips<MAXT>(W, wscale, rows, kgroups, xs, kpad, xscale, xsum, MAXT == 1 ? 1 : T, out, out_stride,
                      accumulate, pre, blockIdx.x, gridDim.x);
}
#define GEMV_NORM_T(NAME, P, MAXT)                                                                               \
    extern "C" __global__ void __launch_bounds__(NW * 32) NAME(                                                  \
        const uint4* __restrict__ W, const float* __restrict__ wscale, int rows, int kgroups,                    \
        const float* __restrict__ x, int x_stride, const float* __restrict__ nw, int cols, int kpad, float eps,  \
        int mode, int T, float* out, int out_stride, int accumulate, int staged, int glu) {                      \
        gemv_norm_body<P, MAXT>(W, wscale, rows, kgroups, x, x_stride, nw, cols, kpad, eps, mode, T, out,        \
                                out_stride, accumulate, staged, glu);                                            \
    }
#define GEMV_NORM4(P) GEMV_NORM_T(ternary_gemv_norm_p##P, P, 4)
#define GEMV_NORM1(P) GEMV_NORM_T(ternary_gemv_norm1_p##P, P, 1)
// Every width of FOR_EACH_PER in both forms (one token; up to 4), spread over parts 2-6 by the
// time each takes to compile.
#if IN_PART(2)
GEMV_NORM4(4) GEMV_NORM4(8) GEMV_NORM4(10)
#endif
#if IN_PART(3)
GEMV_NORM4(12) GEMV_NORM4(16)
#endif
#if IN_PART(4)
GEMV_NORM4(20) GEMV_NORM4(28)
#endif
#if IN_PART(5)
GEMV_NORM1(4) GEMV_NORM1(8) GEMV_NORM1(10) GEMV_NORM1(12) GEMV_NORM1(16)
#endif
#if IN_PART(6)
GEMV_NORM1(20) GEMV_NORM1(28)
#endif

// The m16n8k32 A fragments (u8 codes w+1) of the four k-blocks of one weight uint4, unpacked once
// per load: left to itself the compiler redid the shifts and masks for every token tile (seven
// integer instructions per mma, the kernels' bottleneck).
__device__ __forceinline__ void unpack_a(const uint4& wv, u32 (&a)[4][4]) {
    u32 wk[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
        a[kb][0] = wk[kb] & 0x03030303u;
        a[kb][1] = (wk[kb] >> 2) & 0x03030303u;
        a[kb][2] = (wk[kb] >> 4) & 0x03030303u;
        a[kb][3] = (wk[kb] >> 6) & 0x03030303u;
    }
}
__device__ __forceinline__ void mma_u8s8(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Batches of up to 8 * TILES tokens on the tensor cores: mma.m16n8k32 with the weights (u8
// codes) as A and eight tokens' int8 codes as B.
#if __CUDA_ARCH__ >= 800
// A 4-byte copy from global into shared memory (cp.async; completes at `cp_async_wait`).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"((u32)__cvta_generic_to_shared(smem)), "l"(gmem)
                 : "memory");
}
// The tensor-core products' epilogue operands are copied at their start (BENCHMARKS.md, session
// 25): here thread `i` < `n` the weight scale of row `row0 + i` (rows past `rows` are not
// copied), before the wait on the previous kernel.
__device__ __forceinline__ void copy_row_scales(unsigned i, unsigned n, int row0, int rows, const float* wscale,
                                                float* s_w) {
    int row = row0 + i;
    if (i < n && row < rows) cp_async4(&s_w[i], wscale + row);
}
// Each warp takes the same k-groups of two adjacent strips, so every activation fragment it
// loads serves 32 weight rows.
// `glu`: the rows are interleaved gate/up, and act(gate) * up is stored (`store_glu`).
template <int TILES, int WARPS = NW>
__device__ void mma_body(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows, int kgroups,
                         const i8* __restrict__ codes, int kpad, const float* __restrict__ xscale,
                         const int* __restrict__ xsum, int T, float* out, int out_stride, int accumulate,
                         int glu) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int strip0 = blockIdx.x * 2;
    // The epilogue's operands (the rows' weight scales before the wait on the previous kernel;
    // the tokens' scales and code sums and, where the outputs are added, the values they are
    // added to after it) are copied into shared memory by cp.async at the start, so that their
    // round trips overlap the products instead of following them and hold no registers. In
    // registers (70 instead of 62: three blocks per SM instead of four) gate/up lost 10-20%;
    // this way every product gained 2-10% (H200, BENCHMARKS.md session 25).
    __shared__ float s_w[32], s_xs[TILES * 8], s_prev[TILES * 8][32];
    __shared__ int s_xsum[TILES * 8];
    copy_row_scales(threadIdx.x, 32, strip0 * 16, rows, wscale, s_w);
    PDL_ENTRY();
    {
        int t = threadIdx.x - 32;
        if (t >= 0 && t < T) {
            cp_async4(&s_xs[t], xscale + t);
            cp_async4(&s_xsum[t], xsum + t);
        }
        int rr = threadIdx.x % 32, row = strip0 * 16 + rr;
        if (accumulate && !glu && row < rows) {
            for (int t = threadIdx.x / 32; t < T; t += WARPS) cp_async4(&s_prev[t][rr], out + (size_t)t * out_stride + row);
        }
        cp_async_commit();
    }
    // Integer sums over the warps' k-groups: exact in any order, so shared-memory atomics.
    __shared__ int red[32][TILES * 8 + 1];
    for (int i = threadIdx.x; i < 32 * (TILES * 8 + 1); i += blockDim.x) (&red[0][0])[i] = 0;
    __syncthreads();
    int strips = (rows + 15) / 16;
    bool two = strip0 + 1 < strips;
    int acc[2][TILES][4];
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int n = 0; n < TILES; n++) acc[r][n][0] = acc[r][n][1] = acc[r][n][2] = acc[r][n][3] = 0;
    const uint4* ws0 = W + (size_t)strip0 * kgroups * 32 + lane;
    const uint4* ws1 = ws0 + (size_t)kgroups * 32;
    for (int q = warp; q < kgroups; q += WARPS) {
        uint4 wv0 = __ldg(ws0 + (size_t)q * 32);
        uint4 wv1 = two ? __ldg(ws1 + (size_t)q * 32) : make_uint4(0x55555555u, 0x55555555u, 0x55555555u, 0x55555555u);
        u32 a[2][4][4];
        unpack_a(wv0, a[0]);
        unpack_a(wv1, a[1]);
#pragma unroll
        for (int n = 0; n < TILES; n++) {
            int tok = n * 8 + g;
            uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
            if (tok < T) {
                const uint4* xp = (const uint4*)(codes + (size_t)tok * kpad + q * 128 + tq * 32);
                x0 = __ldg(xp);
                x1 = __ldg(xp + 1);
            }
            u32 xk[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
            for (int r = 0; r < 2; r++) {
#pragma unroll
                for (int kb = 0; kb < 4; kb++) mma_u8s8(acc[r][n], a[r][kb], xk[kb * 2], xk[kb * 2 + 1]);
            }
        }
    }
    cp_async_wait<0>();  // this thread's copies, before the barrier below publishes them
#pragma unroll
    for (int r = 0; r < 2; r++) {
#pragma unroll
        for (int n = 0; n < TILES; n++) {
            atomicAdd(&red[16 * r + g][n * 8 + tq * 2], acc[r][n][0]);
            atomicAdd(&red[16 * r + g][n * 8 + tq * 2 + 1], acc[r][n][1]);
            atomicAdd(&red[16 * r + g + 8][n * 8 + tq * 2], acc[r][n][2]);
            atomicAdd(&red[16 * r + g + 8][n * 8 + tq * 2 + 1], acc[r][n][3]);
        }
    }
    __syncthreads();
    // The outputs as `store_out` / `store_glu` form them, from the copies.
    if (glu) {
        for (int i = threadIdx.x; i < TILES * 8 * 16; i += blockDim.x) {
            int t = i / 16, rr = (i & 8) * 2 + (i & 7), row = strip0 * 16 + rr;  // the two strips' gate rows
            if (t < T && row < rows)
                store_glu_value(out, out_stride, t, row, DEQUANT(red[rr][t], s_xsum[t], s_xs[t], s_w[rr]),
                                DEQUANT(red[rr + 8][t], s_xsum[t], s_xs[t], s_w[rr + 8]), glu);
        }
        return;
    }
    for (int i = threadIdx.x; i < TILES * 8 * 32; i += blockDim.x) {
        int t = i / 32, rr = i % 32, row = strip0 * 16 + rr;
        if (t < T && row < rows) {
            float y = DEQUANT(red[rr][t], s_xsum[t], s_xs[t], s_w[rr]);
            out[(size_t)t * out_stride + row] = accumulate ? s_prev[t][rr] + y : y;
        }
    }
}
// blockIdx.y picks a tile of N * 8 tokens, so that one launch covers a whole pass's tokens.
// MINB blocks per SM bound the registers (a 64-token N = 8 variant took 134 per thread, so one
// block per SM, and lost to 32-token tiles at three blocks per SM: BENCHMARKS.md, v9). The
// 32-token kernel at three blocks per SM (80 registers) spilled 48 bytes; at two (96, no spill)
// batch 64 ran 2.5% and pp512 1% faster (v12).
// NAME: `mma_body` with WARPS warps per block for tiles of N * 8 tokens, MINB blocks per SM.
#define MMA_ENTRY_WARPS(NAME, N, WARPS, MINB)                                                                \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, MINB)                                         \
        NAME(const uint4* W, const float* wscale, int rows, int kgroups, const i8* codes, int kpad,           \
             const float* xscale, const int* xsum, int T, float* out, int out_stride, int accumulate,       \
             int glu) {                                                                                     \
        int t0 = blockIdx.y * N * 8;                                                                        \
        mma_body<N, WARPS>(W, wscale, rows, kgroups, codes + (size_t)t0 * kpad, kpad, xscale + t0,          \
                           xsum + t0, min(T - t0, N * 8), out + (size_t)t0 * out_stride, out_stride,        \
                           accumulate, glu);                                                                \
    }
#define MMA_ENTRY(N, MINB) MMA_ENTRY_WARPS(ternary_mma_##N, N, NW, MINB)
#if IN_PART(7)
MMA_ENTRY(1, 3)
MMA_ENTRY(2, 3)
MMA_ENTRY(4, 2)
#endif
// The same with 16 warps per block (`ternary_mma_w*`), for one token tile where the grid is small
// (2B4T's qkv, o and down at up to 16 rows): each warp works through half as many 128-column
// groups (down: ~3.4 instead of ~6.8), each a round trip to memory (`WideRule` in
// model/linear.rs has the rule; WIDE_THREADS there is this block size).
#if IN_PART(8)
MMA_ENTRY_WARPS(ternary_mma_w1, 1, 16, 2)
MMA_ENTRY_WARPS(ternary_mma_w2, 2, 16, 2)
#endif

// Staged products, for grids larger than one wave of the kernel above (at batch 64 gate/up's
// 864 blocks ran in three waves; prefill passes): a block takes MMA_WARPS adjacent strips of 16
// rows and one tile of up to 8 * TILES tokens, with KS warps per strip splitting its 128-column
// groups (warp ks takes groups ks, ks + KS, ...; the host picks the most KS whose grid still
// runs in one wave). Each group's weights and the tile's activation codes go through shared
// memory in a ring of STAGES stages of KS groups by cp.async, STAGES - 1 stages ahead
// of the products, one barrier per stage, so every warp uses the codes its block copied once
// instead of reading them from L2 itself. At the end the warps' integer sums (exact in any
// order) meet in shared memory and every thread finishes a few outputs. Dynamic shared memory:
// `ring_smem` in model/linear.rs. Measured (BENCHMARKS.md, session 13): pp512 +11%, batch-64 gate/up
// 23.4 -> 19.7 us; for grids of one wave the kernel above stays faster (ncu, batch 64: qkv 8.4
// vs 9.5 us, o 8.8 vs 9.9, down 12.5 vs 16.2: half as many blocks here, each a chain of one
// barrier per stage).
// Activation rows sit MMA_XROW bytes apart: 16 bytes of skew put the lanes of a quarter warp
// (two tokens, four 32-byte pieces each) on distinct banks.
#define MMA_WARPS 4
#define MMA_XROW 144
// One strip's products with TILES tiles of 8 tokens whose codes sit in shared memory at `xs`
// (this lane's first piece of token tile 0), MMA_XROW bytes per token.
template <int TILES>
__device__ __forceinline__ void mma_tiles_smem(int (&acc)[TILES][4], const u32 (&a)[4][4], const i8* xs) {
#pragma unroll
    for (int n = 0; n < TILES; n++) {
        const uint4* xp = (const uint4*)(xs + n * 8 * MMA_XROW);
        uint4 x0 = xp[0], x1 = xp[1];
        u32 xk[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int kb = 0; kb < 4; kb++) mma_u8s8(acc[n], a[kb], xk[kb * 2], xk[kb * 2 + 1]);
    }
}

#define MMA_STAGE_BYTES(TILES, KS) ((KS) * (MMA_WARPS * 512 + (TILES) * 8 * MMA_XROW))
template <int TILES, int KS, int STAGES>
__device__ void mma_ring_body(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows,
                              int kgroups, const i8* __restrict__ codes, int kpad, const float* __restrict__ xscale,
                              const int* __restrict__ xsum, int T, float* out, int out_stride, int accumulate,
                              int glu) {
    extern __shared__ __align__(16) unsigned char mma_smem[];
    // Stage st: weights uint4 [KS][MMA_WARPS * 32], then activation codes [KS][TILES * 8][MMA_XROW].
    constexpr int SB = MMA_STAGE_BYTES(TILES, KS), XB = KS * MMA_WARPS * 512, NT = MMA_WARPS * KS * 32;
    u32 base = (u32)__cvta_generic_to_shared(mma_smem);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int w = warp % MMA_WARPS, ks = warp / MMA_WARPS;
    int strip = blockIdx.x * MMA_WARPS + w;
    bool live = strip < (rows + 15) / 16;
    // What this thread copies into every stage, addressed once: its warp's weights of group
    // stage * KS + ks, and activation pieces (group slot, token t, 16 bytes c) of the stage's
    // groups; tokens past T are not copied (their columns of the products are never stored).
    const uint4* wsrc = W + ((size_t)strip * kgroups + ks) * 32 + lane;
    int wofs = (ks * MMA_WARPS * 32 + w * 32 + lane) * 16;  // this lane's weights in a stage
    u32 wdst = base + wofs;
    constexpr int NX = (KS * TILES * 64 + NT - 1) / NT;
    const i8* xsrc[NX];
    u32 xdst[NX];
    int xslot[NX];
#pragma unroll
    for (int k = 0; k < NX; k++) {
        int i = threadIdx.x + k * NT;
        int slot = i / (TILES * 64), r = i % (TILES * 64), t = r >> 3, c = r & 7;
        bool on = i < KS * TILES * 64 && t < T;
        xsrc[k] = codes + (size_t)t * kpad + slot * 128 + c * 16;
        xdst[k] = base + XB + (slot * TILES * 8 + t) * MMA_XROW + c * 16;
        xslot[k] = on ? slot : kgroups;  // never copied
    }
    // The weights do not depend on the previous kernel: their first stages go before the wait,
    // and so do the block's rows' weight scales; the tokens' scales and code sums follow it. The
    // epilogue reads them from shared memory (as `ternary_mma_*`: BENCHMARKS.md, session 25).
    __shared__ float s_w[MMA_WARPS * 16], s_xs[TILES * 8];
    __shared__ int s_xsum[TILES * 8];
    copy_row_scales(threadIdx.x, MMA_WARPS * 16, blockIdx.x * MMA_WARPS * 16, rows, wscale, s_w);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
        if (live && s * KS + ks < kgroups) cp_async16_s(wdst + s * SB, wsrc + (size_t)s * KS * 32);
    PDL_WAIT();
    PDL_START();
    if (threadIdx.x < T) {
        cp_async4(&s_xs[threadIdx.x], xscale + threadIdx.x);
        cp_async4(&s_xsum[threadIdx.x], xsum + threadIdx.x);
    }
    auto copy_x = [&](int stage, int st) {
#pragma unroll
        for (int k = 0; k < NX; k++)
            if (stage * KS + xslot[k] < kgroups) cp_async16_s(xdst[k] + st * SB, xsrc[k] + stage * KS * 128);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        copy_x(s, s);
        cp_async_commit();
    }
    int acc[TILES][4];
#pragma unroll
    for (int n = 0; n < TILES; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;
    int stages = (kgroups + KS - 1) / KS;
    for (int i = 0; i < stages; i++) {
        int st = i % STAGES;
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage i landed for every thread; every warp is done with stage i - 1
        int ni = i + STAGES - 1, ns = ni % STAGES;
        if (ni < stages) {
            if (live && ni * KS + ks < kgroups) cp_async16_s(wdst + ns * SB, wsrc + (size_t)ni * KS * 32);
            copy_x(ni, ns);
        }
        cp_async_commit();  // possibly empty: the group count stays in step with i
        if (live && i * KS + ks < kgroups) {
            const unsigned char* sm = mma_smem + st * SB;
            u32 a[4][4];
            unpack_a(*(const uint4*)(sm + wofs), a);
            mma_tiles_smem<TILES>(acc, a, (const i8*)(sm + XB) + (ks * TILES * 8 + g) * MMA_XROW + tq * 32);
        }
    }
    // Every warp's sums into shared memory as [ks][token][row] (rows RP ints apart: the C
    // fragment's lanes land on distinct banks; every copy has landed, each stage having been
    // waited for), then each thread finishes every NT-th output, rows fastest (coalesced
    // stores), adding the KS partial sums (integers: exact in any order).
    constexpr int RP = MMA_WARPS * 16 + 4;
    int* red = (int*)mma_smem;
    cp_async_wait<0>();  // the scales too, where there were no stages to wait for
    __syncthreads();
    if (live) {
#pragma unroll
        for (int n = 0; n < TILES; n++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                red[(ks * TILES * 8 + n * 8 + 2 * tq + (j & 1)) * RP + w * 16 + g + 8 * (j >> 1)] = acc[n][j];
    }
    __syncthreads();
    constexpr int NO = TILES * 8 * MMA_WARPS * 16 / NT;
    int rl = threadIdx.x % (MMA_WARPS * 16), row = blockIdx.x * MMA_WARPS * 16 + rl;
    if (glu) {
        // The threads of each strip's gate rows take their up rows' sums too (`glu` in mma_body).
        if ((rl & 15) >= 8) return;
#pragma unroll
        for (int k = 0; k < NO; k++) {
            int t = (threadIdx.x + k * NT) / (MMA_WARPS * 16);
            int vg = 0, vu = 0;
#pragma unroll
            for (int p = 0; p < KS; p++) {
                vg += red[(p * TILES * 8 + t) * RP + rl];
                vu += red[(p * TILES * 8 + t) * RP + rl + 8];
            }
            if (t < T && row < rows)
                store_glu_value(out, out_stride, t, row, DEQUANT(vg, s_xsum[t], s_xs[t], s_w[rl]),
                                DEQUANT(vu, s_xsum[t], s_xs[t], s_w[rl + 8]), glu);
        }
        return;
    }
    float y[NO];
#pragma unroll
    for (int k = 0; k < NO; k++) {
        int t = (threadIdx.x + k * NT) / (MMA_WARPS * 16);
        int v = 0;
#pragma unroll
        for (int p = 0; p < KS; p++) v += red[(p * TILES * 8 + t) * RP + rl];
        y[k] = (t < T && row < rows) ? DEQUANT(v, s_xsum[t], s_xs[t], s_w[rl]) : 0.f;
    }
#pragma unroll
    for (int k = 0; k < NO; k++) {
        int t = (threadIdx.x + k * NT) / (MMA_WARPS * 16);
        if (t < T && row < rows) store_value(out, out_stride, t, row, y[k], accumulate);
    }
}
// blockIdx.y picks a tile of N * 8 tokens, so that one launch covers a whole pass's tokens.
#define MMA_RING_ENTRY(N, KS, STAGES)                                                                        \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * KS * 32)                                      \
        ternary_mma_ring_##N##_k##KS(const uint4* W, const float* wscale, int rows, int kgroups,             \
                                     const i8* codes, int kpad, const float* xscale, const int* xsum, int T, \
                                     float* out, int out_stride, int accumulate, int glu) {                 \
        int t0 = blockIdx.y * N * 8;                                                                        \
        mma_ring_body<N, KS, STAGES>(W, wscale, rows, kgroups, codes + (size_t)t0 * kpad, kpad, xscale + t0, \
                                     xsum + t0, min(T - t0, N * 8), out + (size_t)t0 * out_stride,          \
                                     out_stride, accumulate, glu);                                          \
    }
#define MMA_RING_ENTRIES(N) MMA_RING_ENTRY(N, 1, 4) MMA_RING_ENTRY(N, 2, 4) MMA_RING_ENTRY(N, 4, 6)
#if IN_PART(7)
MMA_RING_ENTRIES(1)
MMA_RING_ENTRIES(2)
MMA_RING_ENTRIES(4)
#endif

#endif

#if __CUDA_ARCH__ >= 900
// Batched products as tiles of 8 * TILES tokens x 16 * TW rows (sm_90): each of the TW warps
// takes one strip for all the tile's tokens (blockIdx.y picks the tile), so each weight
// fragment serves every token; the block's share of the 128-column groups goes through a
// ring of TILE_STAGES stages (a group's weights and the tile's activation codes, by cp.async,
// the first stages' weights before the wait on the previous kernel), so the block reads the
// codes from L2 once per 128 rows (`ternary_mma_*`: once per 32 rows and 32 tokens). The blocks
// of one row tile may split its groups (`splits`, the host's choice, at most 8): they are then
// one thread-block cluster, and their integer sums (exact in any order) meet through
// distributed shared memory, each block finishing a share of the tile's tokens. The tiles'
// products are unrolled without run-time conditions, so that the independent mma chains
// interleave (a run-time check per token tile serialized each tile's chain of four dependent
// mma: 2.5x slower at batch 64). Decode steps of 9-32 rows took them (BENCHMARKS.md, session 18) until
// session 35 measured those steps 1.7-10% faster on `ternary_mma_*`: now only on request.
#define TILE_WARPS 8
#define TILE_STAGES 4
// The sum of the int at `p` in the shared memory of each of the cluster's `splits` blocks (at
// most 8; its own where there is one), every load issued before the first add.
__device__ __forceinline__ int tile_sum(const int* p, int splits) {
    if (splits == 1) return *p;
    int v[8];
#pragma unroll
    for (int q = 0; q < 8; q++) v[q] = q < splits ? __float_as_int(cluster_load((const float*)p, q)) : 0;
    int sum = 0;
#pragma unroll
    for (int q = 0; q < 8; q++) sum += v[q];
    return sum;
}
#define TILE_STAGE_BYTES(RB, TILES) ((RB) * 32 + (TILES) * 8 * MMA_XROW)
template <int TW, int TILES>
__device__ void mma_tile_body(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows, int kgroups,
                              const i8* __restrict__ codes, int kpad, const float* __restrict__ xscale,
                              const int* __restrict__ xsum, int T, float* out, int out_stride, int accumulate,
                              int glu, int splits) {
    extern __shared__ __align__(16) unsigned char tile_smem[];
    // Stage: weights uint4 [TW strips][32 lanes], then activation codes [tokens][MMA_XROW].
    constexpr int RB = TW * 16, SB = TILE_STAGE_BYTES(RB, TILES), XB = RB * 32, NT = TW * 32;
    u32 base = (u32)__cvta_generic_to_shared(tile_smem);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int rank = splits > 1 ? (int)(blockIdx.x % splits) : 0, tile = blockIdx.x / splits;
    int per = (kgroups + splits - 1) / splits, q0 = rank * per, nq = max(0, min(per, kgroups - q0));
    int strips = (rows + 15) / 16, strip = tile * TW + warp;
    // This thread's weights: strip `strip`, lane `lane`, from group q0 on.
    const uint4* w0 = W + ((size_t)strip * kgroups + q0) * 32 + lane;
    u32 wdst = base + warp * 512 + lane * 16;
    // Its activation pieces (token t, 16 bytes c) of every stage; tokens past T are not copied
    // (their columns of the sums are never stored).
    constexpr int NX = (TILES * 64 + NT - 1) / NT;
    const i8* xsrc[NX];
    u32 xdst[NX];
    bool xon[NX];
#pragma unroll
    for (int k = 0; k < NX; k++) {
        int i = threadIdx.x + k * NT, t = i >> 3, c = i & 7;
        xon[k] = i < TILES * 64 && t < T;
        xsrc[k] = codes + (size_t)t * kpad + q0 * 128 + c * 16;
        xdst[k] = base + XB + t * MMA_XROW + c * 16;
    }
    auto copy_w = [&](int s, int st) {
        if (strip < strips) cp_async16_s(wdst + st * SB, w0 + (size_t)s * 32);
    };
    auto copy_x = [&](int s, int st) {
#pragma unroll
        for (int k = 0; k < NX; k++)
            if (xon[k]) cp_async16_s(xdst[k] + st * SB, xsrc[k] + s * 128);
    };
    // The weights do not depend on the previous kernel: their first stages and the scales of
    // the row this thread finishes (`glu`: the gate row k = x % 64 and its up row) go before
    // the wait.
#pragma unroll
    for (int s = 0; s < TILE_STAGES - 1; s++)
        if (s < nq) copy_w(s, s);
    constexpr int WIDTH = RB / 2;  // with `glu`; else RB
    int width = glu ? WIDTH : RB, k = threadIdx.x % width;
    int rl = glu ? (k >> 3) * 16 + (k & 7) : k, row = tile * RB + rl;
    float ws = row < rows ? wscale[row] : 0.f, wsu = glu && row + 8 < rows ? wscale[row + 8] : 0.f;
    PDL_WAIT();
    PDL_START();
    __shared__ int s_sum[TILES * 8];
    __shared__ float s_scale[TILES * 8];
    if (threadIdx.x < T) {
        s_sum[threadIdx.x] = xsum[threadIdx.x];
        s_scale[threadIdx.x] = xscale[threadIdx.x];
    }
#pragma unroll
    for (int s = 0; s < TILE_STAGES - 1; s++) {
        if (s < nq) copy_x(s, s);
        cp_async_commit();
    }
    int acc[TILES][4];
#pragma unroll
    for (int n = 0; n < TILES; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;
    for (int i = 0; i < nq; i++) {
        int st = i % TILE_STAGES;
        cp_async_wait<TILE_STAGES - 2>();
        __syncthreads();  // stage i landed for every thread; every warp is done with stage i - 1
        int ni = i + TILE_STAGES - 1;
        if (ni < nq) {
            copy_w(ni, ni % TILE_STAGES);
            copy_x(ni, ni % TILE_STAGES);
        }
        cp_async_commit();  // possibly empty: the group count stays in step with i
        const unsigned char* sm = tile_smem + st * SB;
        u32 a[4][4];
        unpack_a(*(const uint4*)(sm + warp * 512 + lane * 16), a);
        mma_tiles_smem<TILES>(acc, a, (const i8*)(sm + XB) + g * MMA_XROW + tq * 32);
    }
    // The sums into shared memory as [token][row] (rows RP ints apart: the C fragment's lanes
    // land on distinct banks), once every copy has landed and every warp is done with the ring.
    constexpr int RP = RB + 4;
    int* red = (int*)tile_smem;
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int n = 0; n < TILES; n++)
#pragma unroll
        for (int j = 0; j < 4; j++) red[(n * 8 + 2 * tq + (j & 1)) * RP + warp * 16 + g + 8 * (j >> 1)] = acc[n][j];
    // The tile's outputs: thread x takes row k = x % RB of the tile (with `glu`, the gate row of
    // k = x % (RB / 2), each strip's first 8, and its up row's sums), every (NT / width)-th token
    // from x / width on, the cluster's blocks contiguous shares of the tokens, four tokens at a
    // time with every load issued before any is used (one round trip per output made the first
    // version 2x slower than `ternary_mma_*`); the first four's residual values (where the
    // outputs are added) are requested before the barrier.
    constexpr int U = 4;
    int ts = (T + splits - 1) / splits, te = min(T, rank * ts + ts), step = NT / width;
    int tb = rank * ts + threadIdx.x / width;
    bool live = row < rows, add = accumulate && !glu;
    float prev[U];
    auto load_prev = [&](int t0) {
#pragma unroll
        for (int j = 0; j < U; j++) {
            int t = t0 + j * step;
            if (add && live && t < te) prev[j] = out[(size_t)t * out_stride + row];
        }
    };
    load_prev(tb);
    if (splits > 1)
        cluster_sync();
    else
        __syncthreads();
    if (live) {
        for (int t0 = tb; t0 < te; t0 += U * step) {
            if (t0 != tb) load_prev(t0);
            int v[U], u[U];
#pragma unroll
            for (int j = 0; j < U; j++) {
                int t = t0 + j * step;
                if (t < te) {
                    v[j] = tile_sum(red + t * RP + rl, splits);
                    if (glu) u[j] = tile_sum(red + t * RP + rl + 8, splits);
                }
            }
#pragma unroll
            for (int j = 0; j < U; j++) {
                int t = t0 + j * step;
                if (t >= te) continue;
                // The other kernels' epilogue (out_value, store_glu) on the scales loaded above.
                float y = DEQUANT(v[j], s_sum[t], s_scale[t], ws);
                if (glu) {
                    float up = DEQUANT(u[j], s_sum[t], s_scale[t], wsu);
                    out[(size_t)t * out_stride + (row >> 4) * 8 + (row & 15)] = glu_act(y, glu) * up;
                } else {
                    out[(size_t)t * out_stride + row] = add ? prev[j] + y : y;
                }
            }
        }
    }
    // Every block's shared memory stays until the others have read it.
    if (splits > 1) cluster_sync_relaxed();
}
// 8 warps of one strip each (4 warps of two strips, whose activation fragments serve twice the
// rows, ran 2-6% slower at batch 16-32: BENCHMARKS.md, session 18).
#define MMA_TILE_ENTRY(TILES)                                                                                \
    extern "C" __global__ void __launch_bounds__(TILE_WARPS * 32)                                           \
        ternary_mma_tile_##TILES(const uint4* W, const float* wscale, int rows, int kgroups, const i8* codes, \
                                 int kpad, const float* xscale, const int* xsum, int T, float* out,           \
                                 int out_stride, int accumulate, int glu, int splits) {                      \
        int t0 = blockIdx.y * TILES * 8;                                                                    \
        mma_tile_body<TILE_WARPS, TILES>(W, wscale, rows, kgroups, codes + (size_t)t0 * kpad, kpad,       \
                                            xscale + t0, xsum + t0, min(T - t0, TILES * 8),                 \
                                            out + (size_t)t0 * out_stride, out_stride, accumulate, glu,     \
                                            splits);                                                        \
    }
#if IN_PART(6)
MMA_TILE_ENTRY(2)
MMA_TILE_ENTRY(4)
MMA_TILE_ENTRY(8)
#endif

#if IN_PART(5)
// Register-blocked products (sm_90; prefill's gate/up): a block takes GEMM_STRIPS strips (128
// rows) x GEMM_TOKENS tokens with 4 warps, 2 along the rows x 2 along the tokens, each warp 4
// strips x 4 token tiles of 8 (64 integer accumulators). Each activation fragment a warp reads
// from shared memory then serves 4 strips, and each unpacked weight fragment 4 token tiles: per
// mma 0.19 16-byte shared-memory loads against 0.53 in the tiled kernel above (one strip per
// warp). The block's share of the 128-column groups goes through a ring of GEMM_STAGES stages
// (cp.async; the first stages' weights before the wait on the previous kernel), one barrier per
// group; alone, that loop runs at the tensor cores' mma.sync peak (bench/gpu/mma_peak.cu). The
// blocks of one row tile may split its groups (`splits`, at most 8) as one thread-block cluster,
// their integer sums meeting through distributed shared memory (4 adjacent rows per load); each
// block then finishes a share of the tokens. Where the outputs are added to (`accumulate`), the
// values they are added to are copied into shared memory at the start, so that the epilogue
// makes no round trip to global memory before its stores. (BENCHMARKS.md, session 28: at 64 rows
// the block's fill and drain cost twice its loop, level with `ternary_mma_*`; from 128 rows the
// gate/up product is 18-25% faster than the staged kernel.)
#define GEMM_STRIPS 8
#define GEMM_TOKENS 64
#define GEMM_STAGES 4
#define GEMM_STAGE_BYTES (GEMM_STRIPS * 512 + GEMM_TOKENS * MMA_XROW)
#define GEMM_RP (GEMM_STRIPS * 16 + 4)
// The 4 ints at `p` summed over the cluster's `splits` blocks (at most 8; its own where there is
// one), every load issued before the first add.
__device__ __forceinline__ int4 gemm_sum4(const int* p, int splits) {
    if (splits == 1) return *(const int4*)p;
    u32 a = (u32)__cvta_generic_to_shared(p);
    int4 v[8];
#pragma unroll
    for (int q = 0; q < 8; q++) {
        v[q] = make_int4(0, 0, 0, 0);
        if (q < splits) {
            u32 ra;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(q));
            asm volatile("ld.shared::cluster.v4.s32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(v[q].x), "=r"(v[q].y), "=r"(v[q].z), "=r"(v[q].w)
                         : "r"(ra));
        }
    }
    int4 s = v[0];
#pragma unroll
    for (int q = 1; q < 8; q++) s = make_int4(s.x + v[q].x, s.y + v[q].y, s.z + v[q].z, s.w + v[q].w);
    return s;
}
// One warp's 4 strips x 4 token tiles over one 128-column group, from its fragments.
__device__ __forceinline__ void gemm_group(int (&acc)[4][4][4], const uint4 (&w)[4], const uint4 (&x)[4][2]) {
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
#pragma unroll
        for (int s = 0; s < 4; s++) {
            u32 a[4][4];
            unpack_a(w[s], a);  // only k-block kb's fragment is used: the rest compiles away
#pragma unroll
            for (int n = 0; n < 4; n++) {
                const uint4& xv = x[n][kb >> 1];
                mma_u8s8(acc[s][n], a[kb], (kb & 1) ? xv.z : xv.x, (kb & 1) ? xv.w : xv.y);
            }
        }
    }
}
__device__ void gemm_body(const uint4* __restrict__ W, const float* __restrict__ wscale, int rows, int kgroups,
                          const i8* __restrict__ codes, int kpad, const float* __restrict__ xscale,
                          const int* __restrict__ xsum, int T, float* out, int out_stride, int accumulate, int glu,
                          int splits) {
    extern __shared__ __align__(16) unsigned char gemm_smem[];
    // Stage: weights uint4 [GEMM_STRIPS][32 lanes], then codes [GEMM_TOKENS][MMA_XROW]; after
    // the stages, where the outputs are added to, their present values [token of the share][row].
    constexpr int SB = GEMM_STAGE_BYTES, XB = GEMM_STRIPS * 512, RB = GEMM_STRIPS * 16, NT = 128;
    u32 base = (u32)__cvta_generic_to_shared(gemm_smem);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    int wr = warp & 1, wt = warp >> 1;
    int rank = splits > 1 ? (int)(blockIdx.x % splits) : 0, tile = blockIdx.x / splits;
    int per = (kgroups + splits - 1) / splits, q0 = rank * per, nq = max(0, min(per, kgroups - q0));
    int strips = (rows + 15) / 16, row0 = tile * RB;
    // What this thread copies into every stage: weight pieces p = x + 128 j (strip p / 32, lane
    // p % 32; strips past the matrix are not copied, their sums never stored) and code pieces
    // p = x + 128 j (token p / 8, 16 bytes p % 8; tokens past T likewise). Stage i's pieces
    // are at these addresses plus i groups.
    const uint4* wsrc[2];
    u32 wdst[2];
    bool won[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        int p = threadIdx.x + NT * j, s = tile * GEMM_STRIPS + (p >> 5);
        won[j] = s < strips;
        wsrc[j] = W + ((size_t)s * kgroups + q0) * 32 + (p & 31);
        wdst[j] = base + p * 16;
    }
    const i8* xsrc[4];
    u32 xdst[4];
    bool xon[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int p = threadIdx.x + NT * j, t = p >> 3;
        xon[j] = t < T;
        xsrc[j] = codes + (size_t)t * kpad + q0 * 128 + (p & 7) * 16;
        xdst[j] = base + XB + t * MMA_XROW + (p & 7) * 16;
    }
    auto copy_w = [&](int i) {
        u32 st = (i & (GEMM_STAGES - 1)) * SB;
#pragma unroll
        for (int j = 0; j < 2; j++) cp_async16_if(wdst[j] + st, wsrc[j] + (size_t)i * 32, won[j] && i < nq);
    };
    auto copy_x = [&](int i) {
        u32 st = (i & (GEMM_STAGES - 1)) * SB;
#pragma unroll
        for (int j = 0; j < 4; j++) cp_async16_if(xdst[j] + st, xsrc[j] + i * 128, xon[j] && i < nq);
    };
    __shared__ float s_w[RB], s_xs[GEMM_TOKENS];
    __shared__ int s_xsum[GEMM_TOKENS];
    copy_row_scales(threadIdx.x, RB, row0, rows, wscale, s_w);
#pragma unroll
    for (int i = 0; i < GEMM_STAGES - 1; i++) copy_w(i);
    PDL_WAIT();
    PDL_START();
    if (threadIdx.x < T) {
        cp_async4(&s_xs[threadIdx.x], xscale + threadIdx.x);
        cp_async4(&s_xsum[threadIdx.x], xsum + threadIdx.x);
    }
    // This block's share of the tokens in the epilogue, and the values its outputs add to.
    int ts = (T + splits - 1) / splits, ta = rank * ts, te = min(T, ta + ts);
    float* prev = (float*)(gemm_smem + GEMM_STAGES * SB);
    if (accumulate && !glu) {
        float* src = out + (size_t)ta * out_stride + row0;
        if ((out_stride & 3) == 0 && (rows & 3) == 0 && ((size_t)src & 15) == 0) {
            for (int i = threadIdx.x; i < (te - ta) * (RB / 4); i += NT) {
                int t = i / (RB / 4), r = (i % (RB / 4)) * 4;
                cp_async16_if((u32)__cvta_generic_to_shared(prev + t * RB + r), src + (size_t)t * out_stride + r,
                              row0 + r < rows);
            }
        } else {
            for (int i = threadIdx.x; i < (te - ta) * RB; i += NT) {
                int t = i / RB, r = i % RB;
                if (row0 + r < rows) cp_async4(prev + t * RB + r, src + (size_t)t * out_stride + r);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < GEMM_STAGES - 1; i++) {
        copy_x(i);
        cp_async_commit();
    }
    int acc[4][4][4];
#pragma unroll
    for (int s = 0; s < 4; s++)
#pragma unroll
        for (int n = 0; n < 4; n++) acc[s][n][0] = acc[s][n][1] = acc[s][n][2] = acc[s][n][3] = 0;
    // This warp's fragments of a stage: its 4 strips' weights, its 4 token tiles' codes.
    u32 wrd = base + (wr * 4 * 32 + lane) * 16;
    u32 xrd = base + XB + (wt * 32 + g) * MMA_XROW + tq * 32;
    // Group i: wait until it has landed (for every thread: the barrier, after which every warp
    // is also done with group i - 1, whose slot is refilled), read this warp's fragments,
    // multiply. (Reading group i + 1's fragments during group i's products, in a second register
    // set, made ptxas recompute the copies' addresses at every group: ~330 instructions per
    // group for 64 mma instead of ~250.)
    for (int i = 0; i < nq; i++) {
        cp_async_wait<GEMM_STAGES - 2>();
        __syncthreads();
        int ni = i + GEMM_STAGES - 1;
        if (ni < nq) {
            copy_w(ni);
            copy_x(ni);
        }
        cp_async_commit();  // possibly empty: the group count stays in step with i
        u32 st = (i & (GEMM_STAGES - 1)) * SB;
        uint4 w[4], x[4][2];
#pragma unroll
        for (int s = 0; s < 4; s++) w[s] = ld_shared_v4(wrd + st + s * 512);
#pragma unroll
        for (int n = 0; n < 4; n++) {
            x[n][0] = ld_shared_v4(xrd + st + n * 8 * MMA_XROW);
            x[n][1] = ld_shared_v4(xrd + st + n * 8 * MMA_XROW + 16);
        }
        gemm_group(acc, w, x);
    }
    int* red = (int*)gemm_smem;
    cp_async_wait<0>();
    __syncthreads();  // every copy landed, every warp done with the ring
    if (glu && splits == 1) {
        // Each lane's C fragments hold gate row g and its up row g + 8 of each strip for the
        // same tokens, so each warp forms act(gate) * up of its own sums: they go through a
        // private region of shared memory only so that the loop over them stays rolled
        // (unrolled, its 64 divisions' code overflowed the instruction cache: half the kernel's
        // stalls under ncu).
        int idx = 0, *mine = red + warp * 64 * 32 + lane;
#pragma unroll
        for (int s = 0; s < 4; s++)
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int j = 0; j < 4; j++) mine[(idx++) * 32] = acc[s][n][j];
        __syncwarp();
#pragma unroll 1
        for (int k = 0; k < 16; k++) {
            int s = k >> 2, n = k & 3, rl = (wr * 4 + s) * 16 + g, row = row0 + rl;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int t = wt * 32 + n * 8 + 2 * tq + h;
                if (t < T && row < rows)
                    store_glu_value(out, out_stride, t, row,
                                    DEQUANT(mine[(k * 4 + h) * 32], s_xsum[t], s_xs[t], s_w[rl]),
                                    DEQUANT(mine[(k * 4 + h + 2) * 32], s_xsum[t], s_xs[t], s_w[rl + 8]), glu);
            }
        }
        return;
    }
    // The sums into shared memory as [token][row] (rows GEMM_RP ints apart: the C fragment's
    // lanes land on distinct banks), for the cluster's blocks to sum.
#pragma unroll
    for (int s = 0; s < 4; s++)
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                red[(wt * 32 + n * 8 + 2 * tq + (j & 1)) * GEMM_RP + (wr * 4 + s) * 16 + g + 8 * (j >> 1)] =
                    acc[s][n][j];
    if (splits > 1)
        cluster_sync();
    else
        __syncthreads();
    if (glu) {
        // Thread x: the 4 gate rows rl.. of output group x % 16 (strip (x % 16) / 2, its first
        // or second 4 gate rows) and their up rows 8 further, every 8th token of the share.
        int o = threadIdx.x & 15, rl = (o >> 1) * 16 + (o & 1) * 4;
        for (int t = ta + (threadIdx.x >> 4); t < te; t += NT / 16) {
            int4 gs = gemm_sum4(red + t * GEMM_RP + rl, splits), us = gemm_sum4(red + t * GEMM_RP + rl + 8, splits);
            int gv[4] = {gs.x, gs.y, gs.z, gs.w}, uv[4] = {us.x, us.y, us.z, us.w};
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (row0 + rl + j < rows)
                    store_glu_value(out, out_stride, t, row0 + rl + j, DEQUANT(gv[j], s_xsum[t], s_xs[t], s_w[rl + j]),
                                    DEQUANT(uv[j], s_xsum[t], s_xs[t], s_w[rl + 8 + j]), glu);
        }
    } else {
        // Thread x: rows 4 (x % 32).. of every 4th token of the share.
        int rl = (threadIdx.x & 31) * 4, add = accumulate;
#pragma unroll 2
        for (int t = ta + (threadIdx.x >> 5); t < te; t += NT / 32) {
            int4 vs = gemm_sum4(red + t * GEMM_RP + rl, splits);
            int v[4] = {vs.x, vs.y, vs.z, vs.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int row = row0 + rl + j;
                if (row < rows) {
                    float y = DEQUANT(v[j], s_xsum[t], s_xs[t], s_w[rl + j]);
                    out[(size_t)t * out_stride + row] = add ? prev[(t - ta) * RB + rl + j] + y : y;
                }
            }
        }
    }
    // Every block's shared memory stays until the others have read it.
    if (splits > 1) cluster_sync_relaxed();
}
// blockIdx.y picks a tile of GEMM_TOKENS tokens, so that one launch covers a whole pass's tokens.
extern "C" __global__ void __launch_bounds__(128, 1)
    ternary_gemm(const uint4* W, const float* wscale, int rows, int kgroups, const i8* codes, int kpad,
                 const float* xscale, const int* xsum, int T, float* out, int out_stride, int accumulate, int glu,
                 int splits) {
    int t0 = blockIdx.y * GEMM_TOKENS;
    gemm_body(W, wscale, rows, kgroups, codes + (size_t)t0 * kpad, kpad, xscale + t0, xsum + t0,
              min(T - t0, GEMM_TOKENS), out + (size_t)t0 * out_stride, out_stride, accumulate, glu, splits);
}
#endif
#endif

// ---------------------------------------------------------------------------------------------
// RoPE on q and k of each row (half-split rotation, cos/sin tables from the host), then the
// row's key and value into its sequence's cache at its position.
// Per-row parameters: pos[r], seq[r]; per sequence s: cache base pointer (lo, hi) and capacity
// at seqtab[3s..3s+3]. The cluster attention kernels (attn_one_*) take seq = null with one such
// entry per row in seqtab instead (the cache's address then one load closer); attn_vec_body and
// attn_mma_body accept either. Cache layout: [layer][k|v][capacity][kv_dim].
template <class KV>
__device__ __forceinline__ void kv_store(KV* p, float v);
template <>
__device__ __forceinline__ void kv_store<float>(float* p, float v) { *p = v; }
template <>
__device__ __forceinline__ void kv_store<u16>(u16* p, float v) { *p = f2h(v); }
__device__ __forceinline__ float kv_load(const float* p) { return *p; }
__device__ __forceinline__ float kv_load(const u16* p) { return h2f(*p); }
// The q8 cache (KV = i8): per position a row of kv_dim int8 codes, then one f32 scale per kv
// head, the row padded to 16 bytes; element j of head h is codes[h hd + j] * scales[h]. A head
// vector's scale is absmax / 127 and its codes rint(x / scale), clamped to +-127 (all 0 for a
// zero vector): bitnet-model's q8 cache (kv.rs), code for code.
template <class KV>
struct IsQ8 {
    static constexpr bool v = false;
};
template <>
struct IsQ8<i8> {
    static constexpr bool v = true;
};
// Elements from one position's row to the next: kv_dim, or the q8 row's bytes.
template <class KV>
__device__ __forceinline__ int kv_pitch(int kvd, int n_kv) {
    return IsQ8<KV>::v ? (kvd + 4 * n_kv + 15) & ~15 : kvd;
}
// One warp (every lane) quantizes head vector x(0..hd), hd <= 128, into codes at dst (and at
// dst2 where not null) and returns its scale, which lane 0 stores at *scale.
template <class F>
__device__ __forceinline__ float kv_quant_head(i8* dst, i8* dst2, float* scale, int hd, int lane, F x) {
    float v[4], m = 0.f;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        int j = lane + 32 * u;
        v[u] = j < hd ? x(j) : 0.f;
        m = fmaxf(m, fabsf(v[u]));
    }
    m = warp_max(m);
    float s = m / 127.f;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        int j = lane + 32 * u;
        // NaN converts to 0, as Rust's `as i8` does; out of range saturates, then clamps.
        int q = s == 0.f ? 0 : max(-127, min(127, __float2int_rn(v[u] / s)));
        if (j < hd) {
            dst[j] = (i8)q;
            if (dst2) dst2[j] = (i8)q;
        }
    }
    if (lane == 0) *scale = s;
    return s;
}

template <class KV>
__device__ __forceinline__ KV* seq_cache(const u32* seqtab, int s, int layer, int which, int kvd, int pos) {
    u64 base = (u64)seqtab[3 * s] | ((u64)seqtab[3 * s + 1] << 32);
    u64 cap = seqtab[3 * s + 2];
    return (KV*)base + (((u64)layer * 2 + which) * cap + pos) * kvd;
}

template <class KV>
__device__ void rope_kv_body(float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                             const float* cosT, const float* sinT, int n_heads, int n_kv, int hd, int layer) {
    PDL_ENTRY();
    int r = blockIdx.x;
    int p = pos[r];
    int half = hd / 2;
    int qd = n_heads * hd, kvd = n_kv * hd;
    float* row = qkv + (size_t)r * stride;
    const float* cs = cosT + (size_t)p * half;
    const float* sn = sinT + (size_t)p * half;
    for (int i = threadIdx.x; i < (n_heads + n_kv) * half; i += blockDim.x) {
        int h = i / half, j = i % half;
        float* x = row + h * hd;  // k heads follow the q heads directly
        float x1 = x[j], x2 = x[j + half];
        float c = cs[j], s = sn[j];
        x[j] = x1 * c - x2 * s;
        x[j + half] = x2 * c + x1 * s;
    }
    __syncthreads();
    KV* kc = seq_cache<KV>(seqtab, seq[r], layer, 0, kv_pitch<KV>(kvd, n_kv), p);
    KV* vc = seq_cache<KV>(seqtab, seq[r], layer, 1, kv_pitch<KV>(kvd, n_kv), p);
    if constexpr (IsQ8<KV>::v) {
        // A warp per head vector: the keys' n_kv, then the values'.
        for (int hv = threadIdx.x >> 5; hv < 2 * n_kv; hv += blockDim.x >> 5) {
            int h = hv % n_kv;
            KV* dst = hv < n_kv ? kc : vc;
            const float* src = row + qd + (hv < n_kv ? 0 : kvd) + h * hd;
            kv_quant_head(dst + h * hd, nullptr, (float*)(dst + kvd) + h, hd, threadIdx.x & 31,
                          [&](int j) { return src[j]; });
        }
    } else {
        for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
            kv_store<KV>(kc + i, row[qd + i]);
            kv_store<KV>(vc + i, row[qd + kvd + i]);
        }
    }
}
#if IN_PART(1)
extern "C" __global__ void rope_kv_f32(float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                                       const float* c, const float* s, int nh, int nkv, int hd, int layer) {
    rope_kv_body<float>(qkv, stride, pos, seq, seqtab, c, s, nh, nkv, hd, layer);
}
extern "C" __global__ void rope_kv_f16(float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                                       const float* c, const float* s, int nh, int nkv, int hd, int layer) {
    rope_kv_body<u16>(qkv, stride, pos, seq, seqtab, c, s, nh, nkv, hd, layer);
}
extern "C" __global__ void rope_kv_q8(float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                                      const float* c, const float* s, int nh, int nkv, int hd, int layer) {
    rope_kv_body<i8>(qkv, stride, pos, seq, seqtab, c, s, nh, nkv, hd, layer);
}
#endif

// ---------------------------------------------------------------------------------------------
// Attention, split over chunks of CHUNK positions: block (chunk, kv head, row) scores the row's
// query heads of that kv head against the chunk's keys (positions <= the row's own), and writes
// per query head the running max m, the sum l of exp(score - m) and sum exp(score - m) v; the
// last chunk to finish merges them into the output. Needs head_dim % 4 == 0, <= 128, and <= 8 query heads per kv
// head (checked on the host): lane l holds elements 4l..4l+3 of a key or value row (one 8- or
// 16-byte load), each of the nw warps takes every nw-th position of the chunk, four at a time;
// the warps' partial outputs are summed in shared memory. Dynamic shared memory:
// (group*hd + group*CHUNK + warps*group*hd) floats, for blocks of any number of warps.
#define CHUNK 64
// A lane's four elements of a key or value row as the cache holds them, and as floats.
template <class KV>
struct KvRaw;
template <>
struct KvRaw<float> {
    typedef float4 R;
    static __device__ __forceinline__ float4 get(const R& v) { return v; }
};
template <>
struct KvRaw<u16> {
    typedef uint2 R;
    static __device__ __forceinline__ float4 get(const R& v) {
        return make_float4(h2f((u16)(v.x & 0xffff)), h2f((u16)(v.x >> 16)), h2f((u16)(v.y & 0xffff)),
                           h2f((u16)(v.y >> 16)));
    }
};
// q8: the codes (their scales are applied to the scores and weights, attn_softmax), each as
// the float 2^23 + (code ^ 0x80) less 2^23 + 128 (exact: a byte permute and an add where an
// integer conversion takes a quarter-rate pipe; the kernel is bound by its instructions).
template <>
struct KvRaw<i8> {
    typedef u32 R;
    static __device__ __forceinline__ float4 get(const R& v) {
        u32 x = v ^ 0x80808080u;
        const float base = 8388736.f;
        return make_float4(__uint_as_float(__byte_perm(x, 0x4b000000u, 0x7650)) - base,
                           __uint_as_float(__byte_perm(x, 0x4b000000u, 0x7651)) - base,
                           __uint_as_float(__byte_perm(x, 0x4b000000u, 0x7652)) - base,
                           __uint_as_float(__byte_perm(x, 0x4b000000u, 0x7653)) - base);
    }
};
// Elements e..e+3 of position i's row (rows kvd apart from `rows`), zeros unless on and i < lim.
template <class KV>
__device__ __forceinline__ typename KvRaw<KV>::R kv_row(const KV* rows, int i, int lim, int kvd, int e, bool on) {
    typedef typename KvRaw<KV>::R R;
    return on && i < lim ? *(const R*)(rows + (size_t)i * kvd + e) : R();
}
// A round of four positions i0 + nw u of a warp (the u0-th to u0+3-th it takes) as floats: from
// its early loads `early` where made, else from the cache.
template <class KV, int G>
__device__ __forceinline__ void kv_round(float4 (&x)[4], const typename KvRaw<KV>::R (&early)[G], const KV* rows,
                                         int u0, int i0, int nw, int n, int kvd, int e, bool on) {
#pragma unroll
    for (int u = 0; u < 4; u++)
        x[u] = KvRaw<KV>::get(u0 + u < G ? early[u0 + u] : kv_row(rows, i0 + nw * u, n, kvd, e, on));
}

// What one attention block (chunk c, kv head kvh, row r) works on: the row's position p, the
// chunk's first position lo and its n positions at or before p, the query heads per kv head,
// and its shared memory: the query heads qs (group * hd), the chunk's scores sc (group * CHUNK)
// and the warps' partial outputs acc (warps * group * hd).
struct AttnBlock {
    int p, lo, n, group, kvd;
    float *qs, *sc, *acc;
};

// Sets up the block and stages its query heads in shared memory (RoPE'd for decode, where the
// block whose chunk holds the row's own position first rotates and stores its key and value;
// FRESH: also as the cache holds them (KV) at the start of acc, which is free until the weighted
// sums, so readable until the barrier after the scores). False (for the whole block) where the
// chunk starts after the row's position. BATCH: query elements a thread rotates per round of
// loads (more registers in the setup: the split kernel's, where its queries' loads wait on the
// previous kernel's stores, BENCHMARKS.md session 29).
template <class KV, bool FRESH = false, int BATCH = 1>
__device__ bool attn_begin(AttnBlock& b, const float* qkv, int stride, const u32* pos, int s, const u32* seqtab,
                           int layer, int n_heads, int n_kv, int hd, const float* cosT, const float* sinT, int rope,
                           int c, int kvh, int r) {
    extern __shared__ float sm[];
    int p = pos[r];
    int lo = c * CHUNK;
    if (lo > p) return false;
    int group = n_heads / n_kv, kvd = n_kv * hd;
    b.p = p;
    b.lo = lo;
    b.n = min(lo + CHUNK, p + 1) - lo;
    b.group = group;
    b.kvd = kvd;
    b.qs = sm;
    b.sc = sm + group * hd;
    b.acc = b.sc + group * CHUNK;
    float* qs = b.qs;
    const float* row = qkv + (size_t)r * stride;
    const float* qrow = row + kvh * group * hd;
    if (rope) {
        int half = hd / 2;
        const float* cs = cosT + (size_t)p * half;
        const float* sn = sinT + (size_t)p * half;
        // BATCH == 1: the other kernels' loop as it was (the batched form at 1 changes their
        // machine code; not measured).
        if constexpr (BATCH == 1) {
            for (int i = threadIdx.x; i < group * hd; i += blockDim.x) {
                int h = i / hd, j = i % hd, jj = j % half;
                float x1 = qrow[h * hd + jj], x2 = qrow[h * hd + jj + half];
                qs[i] = j < half ? x1 * cs[jj] - x2 * sn[jj] : x2 * cs[jj] + x1 * sn[jj];
            }
        } else {
            // BATCH elements' loads issued before any is used: one round trip instead of BATCH.
            for (int i0 = threadIdx.x; i0 < group * hd; i0 += BATCH * blockDim.x) {
                float x1[BATCH], x2[BATCH], cv[BATCH], sv[BATCH];
#pragma unroll
                for (int u = 0; u < BATCH; u++) {
                    int i = i0 + u * blockDim.x, h = i / hd, j = i % hd, jj = j % half;
                    bool on = i < group * hd;
                    x1[u] = on ? qrow[h * hd + jj] : 0.f;
                    x2[u] = on ? qrow[h * hd + jj + half] : 0.f;
                    cv[u] = on ? cs[jj] : 0.f;
                    sv[u] = on ? sn[jj] : 0.f;
                }
#pragma unroll
                for (int u = 0; u < BATCH; u++) {
                    int i = i0 + u * blockDim.x, j = i % hd;
                    if (i < group * hd) qs[i] = j < half ? x1[u] * cv[u] - x2[u] * sv[u] : x2[u] * cv[u] + x1[u] * sv[u];
                }
            }
        }
        if constexpr (IsQ8<KV>::v) {
            // Warp 0 the key, warp 1 the value (FRESH: their codes also at acc's start, key then
            // value, and their scales after them, at acc[hd / 2] and acc[hd / 2 + 1]).
            if (c == p / CHUNK && threadIdx.x < 64) {
                int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
                const float* krow = row + n_heads * hd + kvh * hd;
                const float* vrow = row + n_heads * hd + kvd + kvh * hd;
                KV* dst = seq_cache<KV>(seqtab, s, layer, warp, kv_pitch<KV>(kvd, n_kv), p);
                i8* fresh = FRESH ? (i8*)b.acc + warp * hd : nullptr;
                float sc = kv_quant_head((i8*)dst + kvh * hd, fresh, (float*)(dst + kvd) + kvh, hd, lane, [&](int j) {
                    if (warp) return vrow[j];
                    int jj = j % half;
                    float x1 = krow[jj], x2 = krow[jj + half];
                    return j < half ? x1 * cs[jj] - x2 * sn[jj] : x2 * cs[jj] + x1 * sn[jj];
                });
                if (FRESH && lane == 0) b.acc[hd / 2 + warp] = sc;
            }
        } else if (c == p / CHUNK) {
            const float* krow = row + n_heads * hd + kvh * hd;
            const float* vrow = row + n_heads * hd + kvd + kvh * hd;
            KV* kd = seq_cache<KV>(seqtab, s, layer, 0, kvd, p) + kvh * hd;
            KV* vd = seq_cache<KV>(seqtab, s, layer, 1, kvd, p) + kvh * hd;
            for (int j = threadIdx.x; j < hd; j += blockDim.x) {
                int jj = j % half;
                float x1 = krow[jj], x2 = krow[jj + half];
                if (FRESH) {  // the rotation spelled out again: naming it changed attn_mma's code
                    kv_store<KV>((KV*)b.acc + j, j < half ? x1 * cs[jj] - x2 * sn[jj] : x2 * cs[jj] + x1 * sn[jj]);
                    kv_store<KV>((KV*)b.acc + hd + j, vrow[j]);
                }
                kv_store<KV>(kd + j, j < half ? x1 * cs[jj] - x2 * sn[jj] : x2 * cs[jj] + x1 * sn[jj]);
                kv_store<KV>(vd + j, vrow[j]);
            }
        }
    } else {
        for (int i = threadIdx.x; i < group * hd; i += blockDim.x) qs[i] = qrow[i];
    }
    __syncthreads();
    return true;
}

// The chunk's softmax, one warp per query head: sc[h] becomes exp(score - m), ml[2h..2h+2] the
// head's maximum m and sum l. Q8 (a q8 cache, whose codes' dot products are the stored scores):
// each score is first multiplied by its key's scale ks[i], and each weight, once summed into l,
// by its value's scale vs[i].
template <bool Q8 = false>
__device__ void attn_softmax(const AttnBlock& b, float* ml, int nw, const float* ks = nullptr,
                             const float* vs = nullptr) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* sc = b.sc;
    for (int h = warp; h < b.group; h += nw) {
        float m = -INFINITY;
        for (int i = lane; i < b.n; i += 32) m = fmaxf(m, Q8 ? sc[h * CHUNK + i] * ks[i] : sc[h * CHUNK + i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < b.n; i += 32) {
            float x = expf((Q8 ? sc[h * CHUNK + i] * ks[i] : sc[h * CHUNK + i]) - m);
            sc[h * CHUNK + i] = Q8 ? x * vs[i] : x;
            l += x;
        }
        l = warp_sum(l);
        if (lane == 0) {
            ml[2 * h] = m;
            ml[2 * h + 1] = l;
        }
    }
}

// The sum of the block's nw warps' partial outputs for (query head h, dim ee) of a chunk, in
// warp order.
__device__ __forceinline__ float attn_warps_sum(const float* acc, int nw, int group, int hd, int h, int ee) {
    float sum = acc[h * hd + ee];
    for (int w = 1; w < nw; w++) sum += acc[(w * group + h) * hd + ee];
    return sum;
}

// One output from the partials of nc chunks: sum_k o_k e^(m_k - m) / sum_k l_k e^(m_k - m), m the
// largest m_k; `m_of(k)`, `l_of(k)` and `o_of(k)` load chunk k's (global memory or another
// block's shared memory: attn_end and attn_end_cluster merge in the same order and arithmetic).
template <class M, class L, class O>
__device__ __forceinline__ float attn_merge(int nc, M m_of, L l_of, O o_of) {
    float m = -INFINITY;
    for (int k = 0; k < nc; k++) m = fmaxf(m, m_of(k));
    float l = 0.f, o = 0.f;
    for (int k = 0; k < nc; k++) {
        float w = expf(m_of(k) - m);
        l += l_of(k) * w;
        o += o_of(k) * w;
    }
    return o / l;
}

// After the warps' partial outputs are in acc (and a barrier): their sum, divided by l where the
// row has one part (nc = 1), or written with (m, l) as part c of nc; the last part of (row, kv
// head) to finish merges all of them (partials published with a fence before the counter moves,
// read back past L1).
__device__ void attn_end(const AttnBlock& b, const float* ml, int nw, int n_heads, int n_kv, int hd, float* part,
                         int maxchunks, u32* counters, float* out, int c, int nc, int kvh, int r) {
    int group = b.group;
    const float* acc = b.acc;
    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
        int h = idx / hd, ee = idx % hd;
        float sum = attn_warps_sum(acc, nw, group, hd, h, ee);
        if (nc == 1) {
            // The only chunk: no partials to merge (exp(m - m) = 1 in the merge below).
            out[((size_t)r * n_heads + kvh * group + h) * hd + ee] = sum / ml[2 * h + 1];
            continue;
        }
        float* dst = part + (((size_t)r * n_heads + kvh * group + h) * maxchunks + c) * (hd + 2);
        dst[ee] = sum;
        if (ee == 0) {
            dst[hd] = ml[2 * h];
            dst[hd + 1] = ml[2 * h + 1];
        }
    }
    if (nc == 1) return;
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        u32* ctr = counters + (size_t)r * n_kv + kvh;
        last = atomicAdd(ctr, 1u) == (u32)(nc - 1);
        if (last) *ctr = 0;
    }
    __syncthreads();
    if (!last) return;
    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
        int h = idx / hd, ee = idx % hd;
        const float* base = part + ((size_t)r * n_heads + kvh * group + h) * maxchunks * (hd + 2);
        out[((size_t)r * n_heads + kvh * group + h) * hd + ee] =
            attn_merge(nc, [&](int k) { return __ldcg(base + k * (hd + 2) + hd); },
                       [&](int k) { return __ldcg(base + k * (hd + 2) + hd + 1); },
                       [&](int k) { return __ldcg(base + k * (hd + 2) + ee); });
    }
}

// attn_end for a cluster of one block per chunk (block c of the cluster holds chunk c): each
// block sums its warps' partial outputs into its query staging (free since the scores) next to
// its (m, l) in ml, then, after a cluster barrier, finishes its share of the outputs (the nc
// blocks whose chunk holds positions split them) from every chunk's partial in the same order
// and arithmetic as attn_end's merge; a second barrier keeps each block's shared memory alive
// until the others have read it.
__device__ void attn_end_cluster(const AttnBlock& b, const float* ml, int nw, int n_heads, int hd, float* out,
                                 int c, int kvh, int r) {
    int group = b.group, total = group * hd;
    const float* acc = b.acc;
    float* sums = b.qs;
    int nc = b.p / CHUNK + 1;
    float* o_row = out + ((size_t)r * n_heads + kvh * group) * hd;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
        int h = idx / hd, ee = idx % hd;
        float sum = attn_warps_sum(acc, nw, group, hd, h, ee);
        if (nc == 1)
            o_row[idx] = sum / ml[2 * h + 1];
        else
            sums[idx] = sum;
    }
    cluster_sync();
    if (nc > 1) {
        // Shares among the nc blocks that hold a chunk (the others have left).
        int per = (total + nc - 1) / nc, end = min(total, (c + 1) * per);
        for (int idx = c * per + threadIdx.x; idx < end; idx += blockDim.x) {
            int h = idx / hd;
            o_row[idx] = attn_merge(nc, [&](int k) { return cluster_load(ml + 2 * h, k); },
                                    [&](int k) { return cluster_load(ml + 2 * h + 1, k); },
                                    [&](int k) { return cluster_load(sums + idx, k); });
        }
    }
    cluster_sync_relaxed();
}

// NWARPS: the block's warps, a compile-time constant so that the position loops unroll (with
// the count read at run time, pp512 lost 7%: BENCHMARKS.md, v11). Warp w takes positions
// w + NWARPS u of the chunk. The keys and values of its first G are loaded raw into registers
// (32 per lane: 8 positions in f16, all of them with 8 warps; 4 in f32, where 8 spilled in the
// persistent step) before the queries are staged, so that their latency overlaps the staging and
// the values' no longer follows the softmax; any others are loaded after the barrier as before,
// keys for the scores and values after the softmax. In decode the chunk holding the row's own
// position has it last, and this block stores it while staging: the early loads skip it, and it
// is taken from acc after the barrier, as the cache holds it.
//
// GROUP: the query heads per kv head where known at compile time (1, 2, 4 or 8; 0: read at run
// time). Then a round's 4 x GROUP dot products are summed across the warp together
// (warp_sum_scatter: 4 GROUP - 1 shuffles instead of 20 GROUP, the same sums bit for bit).
// CLUSTER (sm_90): the blocks of one (kv head, row) are one thread-block cluster, a block per
// chunk, and merge their partials through distributed shared memory (attn_end_cluster) instead
// of global memory, a fence and a counter. Every block of the cluster takes part in its two
// cluster barriers, those whose chunk starts past the row's position included.
template <class KV, int NWARPS, int GROUP = 0, bool CLUSTER = false>
__device__ void attn_vec_body(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                              int layer, int n_heads, int n_kv, int hd, float scaling, float* part,
                              int maxchunks, const float* cosT, const float* sinT, int rope, u32* counters,
                              float* out, int c, int kvh, int r) {
    typedef typename KvRaw<KV>::R R;
    const int nw = NWARPS, PW = CHUNK / NWARPS, G = PW < 16 / (int)sizeof(KV) ? PW : 16 / (int)sizeof(KV);
    // seq together with pos, so that the cache's base is one load away (volatile: the compiler
    // would move it past the return, a round trip later); none where seqtab is per row.
    int p = pos[r], s = seq ? ((const volatile u32*)seq)[r] : r, lo = c * CHUNK;
    if (lo > p) {
        if (CLUSTER) {
            cluster_sync_relaxed();
            cluster_sync_relaxed();
        }
        return;
    }
    int n = min(lo + CHUNK, p + 1) - lo, kvd = n_kv * hd, pitch = kv_pitch<KV>(kvd, n_kv);
    bool own = rope && c == p / CHUNK;
    int ready = own ? n - 1 : n;  // positions in the cache before the staging
    const KV* kc = seq_cache<KV>(seqtab, s, layer, 0, pitch, lo) + kvh * hd;
    const KV* vc = seq_cache<KV>(seqtab, s, layer, 1, pitch, lo) + kvh * hd;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int e = lane * 4;
    bool on = e < hd;
    R kr[G], vr[G];
#pragma unroll
    for (int u = 0; u < G; u++) {
        kr[u] = kv_row(kc, warp + nw * u, ready, pitch, e, on);
        vr[u] = kv_row(vc, warp + nw * u, ready, pitch, e, on);
    }
    // q8: the chunk's key scales, then its value scales, in shared memory by the barrier before
    // the softmax (loaded here, with the early loads, by threads 0..CHUNK - 1: blocks have at
    // least 128; the row's own from attn_begin).
    __shared__ float kvsc[IsQ8<KV>::v ? 2 * CHUNK : 1];
    float ksr = 0.f, vsr = 0.f;
    if constexpr (IsQ8<KV>::v) {
        if (threadIdx.x < ready) {
            size_t at = (size_t)threadIdx.x * pitch + kvd - kvh * hd;  // the row's scales
            ksr = ((const float*)(kc + at))[kvh];
            vsr = ((const float*)(vc + at))[kvh];
        }
    }
    AttnBlock b;
    attn_begin<KV, true>(b, qkv, stride, pos, s, seqtab, layer, n_heads, n_kv, hd, cosT, sinT, rope, c, kvh, r);
    if constexpr (IsQ8<KV>::v) {
        if (threadIdx.x < ready) {
            kvsc[threadIdx.x] = ksr;
            kvsc[CHUNK + threadIdx.x] = vsr;
        }
        if (own && threadIdx.x == 0) {
            kvsc[n - 1] = b.acc[hd / 2];
            kvsc[CHUNK + n - 1] = b.acc[hd / 2 + 1];
        }
    }
    if (own && on) {
        R fk = *(const R*)((const KV*)b.acc + e), fv = *(const R*)((const KV*)b.acc + hd + e);
#pragma unroll
        for (int u = 0; u < G; u++) {
            if (warp + nw * u == n - 1) {
                kr[u] = fk;
                vr[u] = fv;
            }
        }
    }
    int group = b.group;
    const float* qs = b.qs;
    float* sc = b.sc;
    // Four positions at a time; those past the first G are loaded here (the row's own one is in
    // the cache by now).
#pragma unroll
    for (int u0 = 0; u0 < PW; u0 += 4) {
        int i0 = warp + nw * u0;
        if (i0 >= n) break;
        float4 k[4];
        kv_round<KV, G>(k, kr, kc, u0, i0, nw, n, pitch, e, on);
        if (GROUP > 0) {
            // d[h * 4 + u]: query head h against position i0 + nw u.
            const int NV = 4 * (GROUP > 0 ? GROUP : 1), SH = NV == 32 ? 0 : NV == 16 ? 1 : NV == 8 ? 2 : 3;
            float d[NV];
#pragma unroll
            for (int h = 0; h < NV / 4; h++) {
                float4 q = on ? *(const float4*)(qs + h * hd + e) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                for (int u = 0; u < 4; u++)
                    d[h * 4 + u] =
                        __fmaf_rn(q.w, k[u].w, __fmaf_rn(q.z, k[u].z, __fmaf_rn(q.y, k[u].y, q.x * k[u].x)));
            }
            float v = warp_sum_scatter<NV>(d);
            int j = lane >> SH, i = i0 + nw * (j & 3);
            if ((lane & ((1 << SH) - 1)) == 0 && i < n) sc[(j >> 2) * CHUNK + i] = v * scaling;
            continue;
        }
        for (int h = 0; h < group; h++) {
            float4 q = on ? *(const float4*)(qs + h * hd + e) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                // Fused multiply-adds here (the kernels are compiled without contraction, for the
                // norms' sake; the CPU's attention uses FMA too): ncu counted this kernel's FADD
                // and FMUL at 32% of its instructions, and it is issue-bound (IPC 2.67 of 4).
                float d = __fmaf_rn(q.w, k[u].w, __fmaf_rn(q.z, k[u].z, __fmaf_rn(q.y, k[u].y, q.x * k[u].x)));
                d = warp_sum(d);
                int i = i0 + nw * u;
                if (lane == 0 && i < n) sc[h * CHUNK + i] = d * scaling;
            }
        }
    }
    __syncthreads();
    __shared__ float ml[2 * 32];
    attn_softmax<IsQ8<KV>::v>(b, ml, nw, kvsc, kvsc + CHUNK);
    __syncthreads();
    float o[8][4];
#pragma unroll
    for (int h = 0; h < 8; h++) o[h][0] = o[h][1] = o[h][2] = o[h][3] = 0.f;
#pragma unroll
    for (int u0 = 0; u0 < PW; u0 += 4) {
        int i0 = warp + nw * u0;
        if (i0 >= n) break;
        float4 v[4];
        kv_round<KV, G>(v, vr, vc, u0, i0, nw, n, pitch, e, on);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int i = i0 + nw * u;
            if (i < n) {
#pragma unroll
                for (int h = 0; h < (GROUP > 0 ? GROUP : 8); h++) {
                    if (GROUP > 0 || h < group) {
                        float w = sc[h * CHUNK + i];
                        o[h][0] = __fmaf_rn(w, v[u].x, o[h][0]);
                        o[h][1] = __fmaf_rn(w, v[u].y, o[h][1]);
                        o[h][2] = __fmaf_rn(w, v[u].z, o[h][2]);
                        o[h][3] = __fmaf_rn(w, v[u].w, o[h][3]);
                    }
                }
            }
        }
    }
    if (on) {
#pragma unroll
        for (int h = 0; h < (GROUP > 0 ? GROUP : 8); h++)
            if (GROUP > 0 || h < group)
                *(float4*)(b.acc + (warp * group + h) * hd + e) = make_float4(o[h][0], o[h][1], o[h][2], o[h][3]);
    }
    __syncthreads();
    if (CLUSTER)
        attn_end_cluster(b, ml, nw, n_heads, hd, out, c, kvh, r);
    else
        attn_end(b, ml, nw, n_heads, n_kv, hd, part, maxchunks, counters, out, c, b.p / CHUNK + 1, kvh, r);
}
// attn_vec_*: 8 warps (decode steps of fewer than 32 rows, as the persistent step); attn_vec4_*:
// 4 warps (prefill passes and larger decode steps).
#define ATTN_ENTRY(NAME, KV, NWARPS)                                                                          \
    extern "C" __global__ void __launch_bounds__(NWARPS * 32)                                                 \
        NAME(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab, int layer, int nh, \
             int nkv, int hd, float scaling, float* part, int maxchunks, const float* cosT, const float* sinT,  \
             int rope, u32* counters, float* out) {                                                            \
        PDL_ENTRY();                                                                                           \
        attn_vec_body<KV, NWARPS>(qkv, stride, pos, seq, seqtab, layer, nh, nkv, hd, scaling, part, maxchunks, \
                                  cosT, sinT, rope, counters, out, blockIdx.x, blockIdx.y, blockIdx.z);        \
    }
#if IN_PART(8)
ATTN_ENTRY(attn_vec_f32, float, 8)
ATTN_ENTRY(attn_vec_f16, u16, 8)
ATTN_ENTRY(attn_vec4_f32, float, 4)
ATTN_ENTRY(attn_vec4_f16, u16, 4)
#endif
// The q8 cache's kernels sit in lighter parts (parts 8 and 9 compiled in 11 and 15 s with them,
// the others in 3.4-6.8 s on this VM).
#if IN_PART(1)
ATTN_ENTRY(attn_vec_q8, i8, 8)
#endif
#if IN_PART(4)
ATTN_ENTRY(attn_vec4_q8, i8, 4)
#endif
// attn_one_*_g*: small decode steps on sm_90 (ATTN_ONE_ROWS in model/attention.rs), 8 warps, GROUP
// query heads per kv head, a cluster of one block per chunk (the host launches it with cluster
// dimensions (chunks, 1, 1)) and seq = null (one seqtab entry per row).
#if __CUDA_ARCH__ >= 900
#define ATTN_ONE_ENTRY(NAME, KV, GROUP)                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        NAME(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab, int layer, int nh, \
             int nkv, int hd, float scaling, float* part, int maxchunks, const float* cosT, const float* sinT,  \
             int rope, u32* counters, float* out) {                                                            \
        PDL_ENTRY();                                                                                           \
        attn_vec_body<KV, 8, GROUP, true>(qkv, stride, pos, seq, seqtab, layer, nh, nkv, hd, scaling, part,    \
                                          maxchunks, cosT, sinT, rope, counters, out, blockIdx.x, blockIdx.y,  \
                                          blockIdx.z);                                                         \
    }
#if IN_PART(8)
ATTN_ONE_ENTRY(attn_one_f32_g1, float, 1)
ATTN_ONE_ENTRY(attn_one_f32_g2, float, 2)
ATTN_ONE_ENTRY(attn_one_f32_g4, float, 4)
ATTN_ONE_ENTRY(attn_one_f32_g8, float, 8)
ATTN_ONE_ENTRY(attn_one_f16_g1, u16, 1)
ATTN_ONE_ENTRY(attn_one_f16_g2, u16, 2)
ATTN_ONE_ENTRY(attn_one_f16_g4, u16, 4)
ATTN_ONE_ENTRY(attn_one_f16_g8, u16, 8)
#endif
#if IN_PART(7)
ATTN_ONE_ENTRY(attn_one_q8_g1, i8, 1)
ATTN_ONE_ENTRY(attn_one_q8_g2, i8, 2)
ATTN_ONE_ENTRY(attn_one_q8_g4, i8, 4)
ATTN_ONE_ENTRY(attn_one_q8_g8, i8, 8)
#endif
#endif

#if __CUDA_ARCH__ >= 800
// mma.m16n8k32 with s8 A and s8 (hi) or u8 (lo) B.
template <bool LO>
__device__ __forceinline__ void imma_s8(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if (LO)
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Attention over an f16 cache on the tensor cores (mma.m16n8k16, f32 accumulation), for blocks
// of 4 warps, head_dim HD in {32, 64, 128} and at most 4 query heads per kv head. The vector
// kernel above is bound by its instruction stream (ncu: 282 warp instructions per position and
// kv head, a warp-wide shuffle sum per position and query head); here a warp scores its 16
// positions against every query head of the kv head in HD/16 mma and weights their values in
// HD/16 more. Same block shape, shared memory, softmax and merge as the vector kernel.
// Precision: the tensor cores take f16 operands, so each f32 query (scaled by a power of two so
// that the largest is below 1: exact) and each softmax weight is split into f16 hi + lo (~22
// significant bits together): hi in columns 0..3 of the mma's 8, lo in columns 4..7, the two
// results added. Keys and values are f16 already; products are exact in f32.
// Fragment layouts (PTX ISA, m16n8k16 .f16): A register j holds row g + 8 (j & 1), columns
// 2 tq + 8 (j >> 1) + {0, 1}; B register j rows 2 tq + 8 j + {0, 1}, column g; C element j row
// g + 8 (j >> 1), column 2 tq + (j & 1). A dot product's terms may be put in any order as long
// as A and B agree, so each lane's k-columns are taken where its loads are contiguous.
// Over a q8 cache (KV = i8) the scores are integer mma instead and the values become f16 codes
// (q8_load_k and what follows it).
__device__ __forceinline__ void mma_f16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Four f32 values as two f16x2 registers: their f16 roundings (lo = false) or what those leave
// (lo = true).
__device__ __forceinline__ void split4(const float (&x)[4], bool lo, u32& r0, u32& r1) {
    u16 h[4];
#pragma unroll
    for (int t = 0; t < 4; t++) {
        u16 hi = f2h(x[t]);
        h[t] = lo ? f2h(x[t] - h2f(hi)) : hi;
    }
    r0 = (u32)h[0] | ((u32)h[1] << 16);
    r1 = (u32)h[2] | ((u32)h[3] << 16);
}
// The keys and the values one warp of attn_mma_body multiplies (layouts there).
template <int HD>
__device__ __forceinline__ void attn_mma_load_k(const u16* kc, int kvd, int n, int i0, int g, int tq,
                                                uint4 (&kr)[2][HD / 32]) {
    const uint4 z4 = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int i = i0 + g + 8 * hh;
#pragma unroll
        for (int j = 0; j < HD / 32; j++)
            kr[hh][j] = i < n ? *(const uint4*)(kc + (size_t)i * kvd + 32 * j + 8 * tq) : z4;
    }
}
template <int HD>
__device__ __forceinline__ void attn_mma_load_v(const u16* vc, int kvd, int n, int i0, int g, int tq,
                                                u32 (&vw)[4][HD / 16]) {
    const uint4 z4 = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int e = 0; e < 4; e++) {
        int i = i0 + 4 * tq + e;
        const u16* src = vc + (size_t)i * kvd + g * (HD / 8);
        if (HD >= 64) {
#pragma unroll
            for (int w4 = 0; w4 < HD / 64; w4++) {
                uint4 v = i < n ? ((const uint4*)src)[w4] : z4;
                vw[e][4 * w4] = v.x;
                vw[e][4 * w4 + 1] = v.y;
                vw[e][4 * w4 + 2] = v.z;
                vw[e][4 * w4 + 3] = v.w;
            }
        } else {
            uint2 v = i < n ? *(const uint2*)src : make_uint2(0, 0);
            vw[e][0] = v.x;
            vw[e][1] = v.y;
        }
    }
}
template <int HD>
__device__ __forceinline__ void attn_mma_load(const u16* kc, const u16* vc, int kvd, int n, int i0, int g, int tq,
                                              uint4 (&kr)[2][HD / 32], u32 (&vw)[4][HD / 16]) {
    attn_mma_load_k<HD>(kc, kvd, n, i0, g, tq, kr);
    attn_mma_load_v<HD>(vc, kvd, n, i0, g, tq, vw);
}
// One m-tile of a weighted sum: v[e] holds two dims (an f16x2) of position 4 tq + e; A row g
// takes the first dim of the four positions, row g + 8 the second.
__device__ __forceinline__ void value_mma(float (&o)[4], u32 v0, u32 v1, u32 v2, u32 v3, u32 p0, u32 p1) {
    mma_f16(o, __byte_perm(v0, v1, 0x5410), __byte_perm(v0, v1, 0x7632), __byte_perm(v2, v3, 0x5410),
            __byte_perm(v2, v3, 0x7632), p0, p1);
}
// A q8 cache on the tensor cores (attn_split_body): a warp's keys and values as codes, in
// attn_mma_load's positions and dims (a key piece: 8 codes, a uint2, as they are: A of the
// scores' integer mma; a value run: HD / 8 codes, HD / 32 words, XORed with 0x80 for q8_f16x2
// where q8_value_mma uses them: 0 past n, i.e. code 0), and the positions' scales (keys: g,
// g + 8; values: 4 tq .. + 3; 0 past n). `soff`: bytes from a position's codes of this kv head
// to its scale.
template <class KV, int HD>
struct SplitRegs {  // f16: attn_mma_load's registers
    typedef uint4 K;
    static constexpr int VW = HD / 16;
};
template <int HD>
struct SplitRegs<i8, HD> {
    typedef uint2 K;
    static constexpr int VW = HD / 32;
};
template <int HD>
__device__ __forceinline__ void q8_load_k(const i8* kc, int pitch, int soff, int n, int i0, int g, int tq,
                                          uint2 (&kr)[2][HD / 32], float (&ks)[2]) {
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int i = i0 + g + 8 * hh;
        const i8* row = kc + (size_t)i * pitch;
#pragma unroll
        for (int j = 0; j < HD / 32; j++) {
            kr[hh][j] = i < n ? *(const uint2*)(row + 32 * j + 8 * tq) : make_uint2(0, 0);
        }
        ks[hh] = i < n ? *(const float*)(row + soff) : 0.f;
    }
}
template <int HD>
__device__ __forceinline__ void q8_load_v(const i8* vc, int pitch, int soff, int n, int i0, int g, int tq,
                                          u32 (&vw)[4][HD / 32], float (&vs)[4]) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
        int i = i0 + 4 * tq + e;
        const i8* row = vc + (size_t)i * pitch;
        const i8* src = row + g * (HD / 8);
        u32 w[HD / 32];
        if (HD == 128) {
            uint4 v = i < n ? *(const uint4*)src : make_uint4(0, 0, 0, 0);
            w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
        } else if (HD == 64) {
            uint2 v = i < n ? *(const uint2*)src : make_uint2(0, 0);
            w[0] = v.x, w[1] = v.y;
        } else {
            w[0] = i < n ? *(const u32*)src : 0u;
        }
#pragma unroll
        for (int t = 0; t < HD / 32; t++) vw[e][t] = w[t];
        vs[e] = i < n ? *(const float*)(row + soff) : 0.f;
    }
}
// Two codes (bytes 0, 1 of w for sel 0x4140, bytes 2, 3 for 0x4342; XORed with 0x80) as an
// f16x2: 1024 + 128 + code, less 1152, exact.
__device__ __forceinline__ u32 q8_f16x2(u32 w, u32 sel) {
    u32 t = __byte_perm(w, 0x64646464u, sel), r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(t), "r"(0x64806480u));
    return r;
}
// B of the q8 scores (mma.m16n8k32, s8): column g is query head g & 3 (qh) as 16-bit integers
// q = rint(x / s), s = the head's largest magnitude / 32639 (1 / s: inv), split into
// hi = (q + 128) >> 8 (columns 0..3) and lo = q - 256 hi (in [-128, 127]; columns 4..7), so that
// 256 hi + lo = q exactly; b0 and b1 hold dims 32 j + 8 tq .. + 3 and + 4 .. + 7 (the dims of the
// keys' pieces: a dot product's terms may go in any order as long as A and B agree). Zeros
// where !qon.
__device__ __forceinline__ void q8_q_frag(const float* qh, int j, int g, int tq, float inv, bool qon, u32& b0,
                                          u32& b1) {
    int d0 = 32 * j + 8 * tq;
    u32 w[2] = {0u, 0u};
#pragma unroll
    for (int t = 0; t < 8; t++) {
        // rint by the float add of 1.5 * 2^23 (exact below 2^22; a quarter-rate conversion else).
        int q = qon ? __float_as_int(__fadd_rn(qh[d0 + t] * inv, 12582912.f)) - 0x4b400000 : 0;
        int hi = (q + 128) >> 8, part = g >= 4 ? q - 256 * hi : hi;
        w[t >> 2] |= (u32)(part & 0xff) << (8 * (t & 3));
    }
    b0 = w[0];
    b1 = w[1];
}
// m-tile w of the weighted sum over q8 values (attn_value_mma's operands, converted).
template <int HD>
__device__ __forceinline__ void q8_value_mma(float (&o)[4], const u32 (&vw)[4][HD / 32], int w, u32 p0, u32 p1) {
    // The codes' XOR with 0x80 here rather than at the load: a load's first use is where the warp
    // waits for it, and here that is a chunk's scores and softmax later.
    u32 sel = w & 1 ? 0x4342 : 0x4140, x = 0x80808080u;
    value_mma(o, q8_f16x2(vw[0][w >> 1] ^ x, sel), q8_f16x2(vw[1][w >> 1] ^ x, sel),
              q8_f16x2(vw[2][w >> 1] ^ x, sel), q8_f16x2(vw[3][w >> 1] ^ x, sel), p0, p1);
}
// The exponent ex that scales the block's staged query heads (group x HD) below 1 (2^-ex,
// exact): from their largest magnitude, 0 where that is 0 or not finite.
template <int HD>
__device__ __forceinline__ int attn_q_exp(const AttnBlock& b, int lane) {
    float qmax = 0.f;
    for (int i = lane; i < b.group * HD; i += 32) qmax = fmaxf(qmax, fabsf(b.qs[i]));
    qmax = warp_max(qmax);
    int ex = 0;
    if (qmax > 0.f && qmax < INFINITY) frexpf(qmax, &ex);
    return ex;
}
// B of k-step kk of the scores: column g is query head g & 3 (qh; hi for g < 4, lo beyond),
// scaled by 2^-ex, zeros where !qon.
__device__ __forceinline__ void attn_q_frag(const float* qh, int kk, int g, int tq, int ex, bool qon, u32& b0,
                                            u32& b1) {
    int d0 = 32 * (kk >> 1) + 8 * tq + 4 * (kk & 1);
    float x[4];
#pragma unroll
    for (int t = 0; t < 4; t++) x[t] = qon ? ldexpf(qh[d0 + t], -ex) : 0.f;
    split4(x, g >= 4, b0, b1);
}
// k-step kk of the scores: the keys of positions g and g + 8 (k0, k1: attn_mma_load's pieces)
// times B.
__device__ __forceinline__ void attn_score_mma(float (&s)[4], const uint4& k0, const uint4& k1, int kk, u32 b0,
                                               u32 b1) {
    if (kk & 1)
        mma_f16(s, k0.z, k1.z, k0.w, k1.w, b0, b1);
    else
        mma_f16(s, k0.x, k1.x, k0.y, k1.y, b0, b1);
}
// m-tile w of the weighted sum: the values (attn_mma_load's words) times the weights' B.
template <int HD>
__device__ __forceinline__ void attn_value_mma(float (&o)[4], const u32 (&vw)[4][HD / 16], int w, u32 p0, u32 p1) {
    value_mma(o, vw[0][w], vw[1][w], vw[2][w], vw[3][w], p0, p1);
}
// The q8 kernels' B of the scores for the block's staged query heads (q8_q_frag, the whole
// warp) and qscale: the integer queries' scales of heads hl and hl + 1 (this lane's C columns).
template <int HD>
__device__ __forceinline__ void q8_q_setup(const AttnBlock& b, int lane, int g, int tq, int hl, u32 (&qb)[HD / 16][2],
                                           float (&qscale)[2]) {
    // Every head's largest magnitude (the four reductions side by side), then this lane's B.
    int group = b.group, hq = g & 3;
    float inv = 0.f, mh[4];
#pragma unroll
    for (int h = 0; h < 4; h++) {
        mh[h] = 0.f;
        if (h < group)
#pragma unroll
            for (int i = lane; i < HD; i += 32) mh[h] = fmaxf(mh[h], fabsf(b.qs[h * HD + i]));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int h = 0; h < 4; h++) mh[h] = fmaxf(mh[h], __shfl_xor_sync(FULL, mh[h], o));
#pragma unroll
    for (int h = 0; h < 4; h++) {
        float m = mh[h];
        float sh = m > 0.f && m < INFINITY ? m / 32639.f : 0.f;
        if (h == hq) inv = sh > 0.f ? 1.f / sh : 0.f;
        if (h == hl) qscale[0] = sh;
        if (h == hl + 1) qscale[1] = sh;
    }
#pragma unroll
    for (int j = 0; j < HD / 32; j++) q8_q_frag(b.qs + hq * HD, j, g, tq, inv, hq < group, qb[j][0], qb[j][1]);
}
// The q8 scores of one k-block pass: exact integer sums of the codes against the queries' hi and
// lo columns (si), then as floats: 256 hi + lo (this lane holds hi where tq < 2, its partner
// tq ^ 2 lo) times the query's scale (qscale[t & 1]), the key's (ks[t >> 1]) and `scaling`.
template <int HD>
__device__ __forceinline__ void q8_scores(float (&sc)[4], const uint2 (&kr)[2][HD / 32], const u32 (&qb)[HD / 16][2],
                                          int tq, const float (&qscale)[2], const float (&ks)[2], float scaling) {
    int si[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < HD / 32; j++) imma_s8<false>(si, kr[0][j].x, kr[1][j].x, kr[0][j].y, kr[1][j].y, qb[j][0], qb[j][1]);
#pragma unroll
    for (int t = 0; t < 4; t++) {
        int other = __shfl_xor_sync(FULL, si[t], 2);
        int q = tq < 2 ? 256 * si[t] + other : 256 * other + si[t];
        sc[t] = (float)q * qscale[t & 1] * ks[t >> 1] * scaling;
    }
}
// A warp's weighted sums into acc: hi + lo columns added (o[w][j]: dim g * HD/8 + 2w + (j >> 1),
// column 2 tq + (j & 1)), lanes tq < 2 storing query heads h0 = 2 tq and h0 + 1, scaled by f[0]
// and f[1] where SCALE.
template <int HD, bool SCALE>
__device__ __forceinline__ void attn_acc_store(float* acc, int group, float (&o)[HD / 16][4], int warp, int g, int tq,
                                               int h0, const float (&f)[2]) {
#pragma unroll
    for (int w = 0; w < HD / 16; w++)
#pragma unroll
        for (int t = 0; t < 4; t++) o[w][t] += __shfl_xor_sync(FULL, o[w][t], 2);
    if (tq < 2) {
#pragma unroll
        for (int w = 0; w < HD / 16; w++) {
            int d = g * (HD / 8) + 2 * w;
#pragma unroll
            for (int t = 0; t < 2; t++) {
                int h = h0 + t;
                if (h < group)
                    *(float2*)(acc + (warp * group + h) * HD + d) =
                        SCALE ? make_float2(o[w][t] * f[t], o[w][t + 2] * f[t]) : make_float2(o[w][t], o[w][t + 2]);
            }
        }
    }
}
template <class KV, int HD>
__device__ void attn_mma_body(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                              int layer, int n_heads, int n_kv, float scaling, float* part, int maxchunks,
                              const float* cosT, const float* sinT, int rope, u32* counters, float* out, int c,
                              int kvh, int r) {
    // Keys of positions i0 + g and i0 + g + 8: 16-byte pieces at 32 j + 8 tq (k-steps 2j, 2j + 1
    // take halves of it). Values of positions i0 + 4 tq .. + 3: dims g * HD/8 .. + HD/8 (word w
    // holds dims 2w, 2w + 1 of that run: A rows g and g + 8 of m-tile w). Positions past n: zeros.
    // Issued before the queries are staged, except in the chunk whose key and value this block
    // stores first (decode's own position).
    int p = pos[r], lo = c * CHUNK;
    if (lo > p) return;
    int n = min(lo + CHUNK, p + 1) - lo, kvd = n_kv * HD;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int i0 = warp * 16;  // the warp's 16 positions of the chunk
    int sq = seq ? seq[r] : r;
    const int pitch = kv_pitch<KV>(kvd, n_kv), soff = kvd - kvh * HD + 4 * kvh;
    const KV* kc = seq_cache<KV>(seqtab, sq, layer, 0, pitch, lo) + kvh * HD;
    const KV* vc = seq_cache<KV>(seqtab, sq, layer, 1, pitch, lo) + kvh * HD;
    typedef SplitRegs<KV, HD> Regs;
    typename Regs::K kr[2][HD / 32];
    u32 vw[4][Regs::VW];
    float ks[2] = {0.f, 0.f}, vs[4] = {0.f, 0.f, 0.f, 0.f};  // q8: the positions' scales
    auto load = [&]() {
        if constexpr (IsQ8<KV>::v) {
            q8_load_k<HD>(kc, pitch, soff, n, i0, g, tq, kr, ks);
            q8_load_v<HD>(vc, pitch, soff, n, i0, g, tq, vw, vs);
        } else {
            attn_mma_load<HD>(kc, vc, kvd, n, i0, g, tq, kr, vw);
        }
    };
    bool early = !(rope && c == p / CHUNK);
    if (early) load();
    AttnBlock b;
    attn_begin<KV>(b, qkv, stride, pos, sq, seqtab, layer, n_heads, n_kv, HD, cosT, sinT, rope, c, kvh, r);
    if (!early) load();
    int group = b.group;
    // B of the scores: column g is query head g & 3 (hi for g < 4, lo beyond), scaled by 2^-ex.
    int hq = g & 3;
    bool qon = hq < group;
    const float* qh = b.qs + hq * HD;
    if constexpr (IsQ8<KV>::v) {
        u32 qb[HD / 16][2];
        float qscale[2] = {1.f, 1.f}, s[4];
        q8_q_setup<HD>(b, lane, g, tq, 2 * (tq & 1), qb, qscale);
        q8_scores<HD>(s, kr, qb, tq, qscale, ks, scaling);
        if (tq < 2) {
#pragma unroll
            for (int t = 0; t < 4; t++) {
                int h = 2 * tq + (t & 1), i = i0 + g + 8 * (t >> 1);
                if (h < group && i < n) b.sc[h * CHUNK + i] = s[t];
            }
        }
    } else {
        int ex = attn_q_exp<HD>(b, lane);
        float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            u32 b0, b1;
            attn_q_frag(qh, kk, g, tq, ex, qon, b0, b1);
            attn_score_mma(s, kr[0][kk >> 1], kr[1][kk >> 1], kk, b0, b1);
        }
        // s[j]: position i0 + g + 8 (j >> 1), column 2 tq + (j & 1); lanes tq < 2 add the lo
        // columns (lane tq + 2) to their hi ones.
#pragma unroll
        for (int t = 0; t < 4; t++) s[t] += __shfl_xor_sync(FULL, s[t], 2);
        if (tq < 2) {
#pragma unroll
            for (int t = 0; t < 4; t++) {
                int h = 2 * tq + (t & 1), i = i0 + g + 8 * (t >> 1);
                if (h < group && i < n) b.sc[h * CHUNK + i] = ldexpf(s[t], ex) * scaling;
            }
        }
    }
    __syncthreads();
    __shared__ float ml[2 * 32];
    attn_softmax(b, ml, 4);
    __syncthreads();
    // B of the weighted sum: column g is head g & 3's weights (hi / lo) of positions i0 + 4 tq ..
    // + 3 (k-rows 2 tq + {0, 1} and 2 tq + 8 + {0, 1}).
    u32 p0 = 0, p1 = 0;
    if (qon) {
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int i = i0 + 4 * tq + e;
            x[e] = i < n ? b.sc[hq * CHUNK + i] : 0.f;
            if constexpr (IsQ8<KV>::v) x[e] *= vs[e];
        }
        split4(x, g >= 4, p0, p1);
    }
    float o[HD / 16][4];
#pragma unroll
    for (int w = 0; w < HD / 16; w++) {
        o[w][0] = o[w][1] = o[w][2] = o[w][3] = 0.f;
        if constexpr (IsQ8<KV>::v)
            q8_value_mma<HD>(o[w], vw, w, p0, p1);
        else
            attn_value_mma<HD>(o[w], vw, w, p0, p1);
    }
    const float one[2] = {1.f, 1.f};
    attn_acc_store<HD, false>(b.acc, group, o, warp, g, tq, 2 * tq, one);
    __syncthreads();
    attn_end(b, ml, 4, n_heads, n_kv, HD, part, maxchunks, counters, out, c, b.p / CHUNK + 1, kvh, r);
}
// Batched decode attention on the tensor cores, split over each row's chunks instead of one
// block per chunk: block (s, kv head, row) of a grid of S splits takes chunks s C / ns .. (s + 1)
// C / ns of the row's C (ns = min(C, S) splits hold any); its WARPS warps are WARPS / 4 groups of
// four that take every (WARPS / 4)-th of those chunks, a warp its 16 positions of each, in one
// pass with an online softmax per query head (running maximum m and sum l; the outputs rescaled
// when m moves). A warp's next keys load into its key registers once the scores are formed, its
// next values once the weighted sum is, so each chunk's bytes are in flight while the one before
// is worked on, without a second set of registers (more blocks per SM); AHEAD: the next chunk's
// keys and values all load into a second set as each chunk starts (a longer distance, for steps
// whose blocks fit two per SM anyway). The warps' partials
// merge in shared memory, the splits' through attn_end (partials, fence, counter). Fragments,
// precision (hi + lo f16 halves of queries and weights) and masks as in attn_mma_body. Against
// it, a row's S blocks replace its chunk blocks (a captured graph launches a power of two of
// them, those past the row's position idle), a block's setup (position, queries, RoPE) serves
// several chunks, and the partials to merge drop from C to ns. Dynamic shared memory as
// attn_mma_body's for WARPS warps (the warps' weights on their way to B's layout use acc's
// place).
template <class KV, int HD, int WARPS, bool AHEAD>
__device__ void attn_split_body(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,
                                int layer, int n_heads, int n_kv, float scaling, float* part, int maxchunks,
                                const float* cosT, const float* sinT, int rope, u32* counters, float* out, int s,
                                int kvh, int r) {
    // The positions, the sequence table and the cached keys and values before this step's own
    // position are no kernel's of this step (RoPE and the new key and value are stored below):
    // the first chunk's loads go out before the wait on the previous kernel.
    int p = pos[r];
    int nchunks = p / CHUNK + 1, ns = min(nchunks, (int)gridDim.x);
    int c0 = s * nchunks / ns, c1 = (s + 1) * nchunks / ns;
    int kvd = n_kv * HD;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int i0 = (warp & 3) * 16;  // the warp's 16 positions of each chunk
    int cw = c0 + warp / 4;    // its first chunk; then every (WARPS / 4)-th
    int sq = seq ? seq[r] : r;
    const int pitch = kv_pitch<KV>(kvd, n_kv), soff = kvd - kvh * HD + 4 * kvh;
    const KV* kc = seq_cache<KV>(seqtab, sq, layer, 0, pitch, 0) + kvh * HD;
    const KV* vc = seq_cache<KV>(seqtab, sq, layer, 1, pitch, 0) + kvh * HD;
    auto at = [&](int c) { return (size_t)c * CHUNK * pitch; };
    auto len = [&](int c) { return min(CHUNK, p + 1 - c * CHUNK); };
    typedef SplitRegs<KV, HD> Regs;
    typename Regs::K kr[2][HD / 32];
    u32 vw[4][Regs::VW];
    float ks[2] = {0.f, 0.f}, vs[4] = {0.f, 0.f, 0.f, 0.f};  // q8: the positions' scales
    // One chunk's keys, values or both into the registers given.
    auto load_k = [&](int c, typename Regs::K(&k)[2][HD / 32], float(&kscale)[2]) {
        if constexpr (IsQ8<KV>::v)
            q8_load_k<HD>(kc + at(c), pitch, soff, len(c), i0, g, tq, k, kscale);
        else
            attn_mma_load_k<HD>(kc + at(c), kvd, len(c), i0, g, tq, k);
    };
    auto load_v = [&](int c, u32(&v)[4][Regs::VW], float(&vscale)[4]) {
        if constexpr (IsQ8<KV>::v)
            q8_load_v<HD>(vc + at(c), pitch, soff, len(c), i0, g, tq, v, vscale);
        else
            attn_mma_load_v<HD>(vc + at(c), kvd, len(c), i0, g, tq, v);
    };
    // The first chunk's loads go out before the queries are staged unless it is the chunk whose
    // key and value this block stores first (decode's own position, in the last split).
    bool early = !(rope && cw == nchunks - 1);
    if (s < ns && early && cw < c1) load_k(cw, kr, ks), load_v(cw, vw, vs);
    PDL_ENTRY();
    if (s >= ns) return;
    AttnBlock b;
    attn_begin<KV, false, 4>(b, qkv, stride, pos, sq, seqtab, layer, n_heads, n_kv, HD, cosT, sinT, rope, c1 - 1, kvh,
                             r);
    if (!early && cw < c1) load_k(cw, kr, ks), load_v(cw, vw, vs);
    int group = b.group;
    // B of the scores, as attn_mma_body's, once for all chunks.
    int hq = g & 3;
    bool qon = hq < group;
    const float* qh = b.qs + hq * HD;
    int ex = 0;
    u32 qb[HD / 16][2];
    // This lane's scores and outputs belong to query heads hl + (j & 1) (C column 2 tq + (j & 1),
    // lo halves in columns 4..7).
    int hl = 2 * (tq & 1);
    float qscale[2] = {1.f, 1.f};  // q8: the integer queries' scales, of heads hl and hl + 1
    if constexpr (IsQ8<KV>::v) {
        q8_q_setup<HD>(b, lane, g, tq, hl, qb, qscale);
    } else {
        ex = attn_q_exp<HD>(b, lane);
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) attn_q_frag(qh, kk, g, tq, ex, qon, qb[kk][0], qb[kk][1]);
    }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float o[HD / 16][4];
#pragma unroll
    for (int w = 0; w < HD / 16; w++) o[w][0] = o[w][1] = o[w][2] = o[w][3] = 0.f;
    float* ws = b.acc + 16 * warp;  // the warp's weights, [head][16 WARPS], until the partials
    for (int c = cw; c < c1; c += WARPS / 4) {
        int n = len(c), cn = c + WARPS / 4;
        typename Regs::K nkr[2][HD / 32];
        u32 nvw[4][Regs::VW];
        float nks[2] = {0.f, 0.f}, nvs[4] = {0.f, 0.f, 0.f, 0.f};
        if (AHEAD && cn < c1) load_k(cn, nkr, nks), load_v(cn, nvw, nvs);
        float sc[4] = {0.f, 0.f, 0.f, 0.f};
        if constexpr (IsQ8<KV>::v) {
            q8_scores<HD>(sc, kr, qb, tq, qscale, ks, scaling);
        } else {
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
                attn_score_mma(sc, kr[0][kk >> 1], kr[1][kk >> 1], kk, qb[kk][0], qb[kk][1]);
        }
        if (!AHEAD && cn < c1) load_k(cn, kr, ks);
        float mx[2];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            bool on = i0 + g + 8 * (t >> 1) < n && hl + (t & 1) < group;
            if constexpr (IsQ8<KV>::v) {
                sc[t] = on ? sc[t] : -INFINITY;
            } else {
                sc[t] += __shfl_xor_sync(FULL, sc[t], 2);
                sc[t] = on ? ldexpf(sc[t], ex) * scaling : -INFINITY;
            }
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(sc[h], sc[h + 2]);
#pragma unroll
            for (int off = 4; off < 32; off <<= 1) mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL, mx[h], off));
        }
        float alpha[2], ls[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mn = fmaxf(m[h], mx[h]);
            alpha[h] = mn == -INFINITY ? 1.f : expf(m[h] - mn);
            m[h] = mn;
        }
#pragma unroll
        for (int t = 0; t < 4; t++) sc[t] = sc[t] == -INFINITY ? 0.f : expf(sc[t] - m[t & 1]);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            ls[h] = sc[h] + sc[h + 2];
#pragma unroll
            for (int off = 4; off < 32; off <<= 1) ls[h] += __shfl_xor_sync(FULL, ls[h], off);
            l[h] = l[h] * alpha[h] + ls[h];
        }
#pragma unroll
        for (int w = 0; w < HD / 16; w++)
#pragma unroll
            for (int t = 0; t < 4; t++) o[w][t] *= alpha[t & 1];
        __syncwarp();
        if (tq < 2) {
#pragma unroll
            for (int t = 0; t < 4; t++) {
                int h = hl + (t & 1);
                if (h < group) ws[h * 16 * WARPS + g + 8 * (t >> 1)] = sc[t];
            }
        }
        __syncwarp();
        u32 p0 = 0, p1 = 0;
        if (qon) {
            float x[4];
#pragma unroll
            for (int e = 0; e < 4; e++) x[e] = ws[hq * 16 * WARPS + 4 * tq + e];
            if constexpr (IsQ8<KV>::v) {
#pragma unroll
                for (int e = 0; e < 4; e++) x[e] *= vs[e];
            }
            split4(x, g >= 4, p0, p1);
        }
#pragma unroll
        for (int w = 0; w < HD / 16; w++) {
            if constexpr (IsQ8<KV>::v)
                q8_value_mma<HD>(o[w], vw, w, p0, p1);
            else
                attn_value_mma<HD>(o[w], vw, w, p0, p1);
        }
        if (!AHEAD && cn < c1) load_v(cn, vw, vs);
        if (AHEAD && cn < c1) {
#pragma unroll
            for (int j = 0; j < HD / 32; j++) kr[0][j] = nkr[0][j], kr[1][j] = nkr[1][j];
#pragma unroll
            for (int e = 0; e < 4; e++)
#pragma unroll
                for (int w = 0; w < Regs::VW; w++) vw[e][w] = nvw[e][w];
            ks[0] = nks[0], ks[1] = nks[1];
#pragma unroll
            for (int e = 0; e < 4; e++) vs[e] = nvs[e];
        }
    }
    // The warps' partials onto the block's maximum per head: (m, l) through shared memory, each
    // warp's outputs scaled by e^(m_warp - m) into acc (every warp is past its weights after the
    // barrier); then attn_end as for one chunk.
    __shared__ float wml[WARPS][2][4], ml[2 * 4];
    if (g == 0 && tq < 2) {
#pragma unroll
        for (int h = 0; h < 2; h++)
            if (hl + h < group) wml[warp][0][hl + h] = m[h], wml[warp][1][hl + h] = l[h];
    }
    __syncthreads();
    float f[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float mb = -INFINITY;
        if (hl + h < group)
            for (int w = 0; w < WARPS; w++) mb = fmaxf(mb, wml[w][0][hl + h]);
        f[h] = m[h] == -INFINITY ? 0.f : expf(m[h] - mb);
    }
    attn_acc_store<HD, true>(b.acc, group, o, warp, g, tq, hl, f);
    if (threadIdx.x < group) {
        int h = threadIdx.x;
        float mb = -INFINITY, lb = 0.f;
        for (int w = 0; w < WARPS; w++) mb = fmaxf(mb, wml[w][0][h]);
        for (int w = 0; w < WARPS; w++) {
            float mw = wml[w][0][h];
            lb += mw == -INFINITY ? 0.f : wml[w][1][h] * expf(mw - mb);
        }
        ml[2 * h] = mb;
        ml[2 * h + 1] = lb;
    }
    __syncthreads();
    attn_end(b, ml, WARPS, n_heads, n_kv, HD, part, maxchunks, counters, out, s, ns, kvh, r);
}
#define ATTN_SPLIT_ENTRY(NAME, HD, WARPS, AHEAD, KV)                                                            \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                                  \
        NAME(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab, int layer, int nh, \
             int nkv, int hd, float scaling, float* part, int maxchunks, const float* cosT, const float* sinT,  \
             int rope, u32* counters, float* out) {                                                            \
        attn_split_body<KV, HD, WARPS, AHEAD>(qkv, stride, pos, seq, seqtab, layer, nh, nkv, scaling, part,         \
                                          maxchunks, cosT, sinT, rope, counters, out, blockIdx.x, blockIdx.y,  \
                                          blockIdx.z);                                                         \
    }
// attn_split{SHAPE}_{SFX}_h{32,64,128}.
#define ATTN_SPLIT_SIZES(SHAPE, WARPS, AHEAD, KV, SFX)                         \
    ATTN_SPLIT_ENTRY(attn_split##SHAPE##_##SFX##_h32, 32, WARPS, AHEAD, KV)   \
    ATTN_SPLIT_ENTRY(attn_split##SHAPE##_##SFX##_h64, 64, WARPS, AHEAD, KV)   \
    ATTN_SPLIT_ENTRY(attn_split##SHAPE##_##SFX##_h128, 128, WARPS, AHEAD, KV)
#if IN_PART(9)
ATTN_SPLIT_SIZES(4, 4, false, u16, f16)
ATTN_SPLIT_SIZES(8, 8, false, u16, f16)
ATTN_SPLIT_SIZES(4a, 4, true, u16, f16)
#endif
#if IN_PART(6)
ATTN_SPLIT_SIZES(4, 4, false, i8, q8)
ATTN_SPLIT_SIZES(4a, 4, true, i8, q8)
#endif
#if IN_PART(3)
ATTN_SPLIT_SIZES(8, 8, false, i8, q8)
#endif
#define ATTN_MMA_ENTRY(HD, KV, SFX)                                                                             \
    extern "C" __global__ void __launch_bounds__(128)                                                         \
        attn_mma_##SFX##_h##HD(const float* qkv, int stride, const u32* pos, const u32* seq, const u32* seqtab,    \
                           int layer, int nh, int nkv, int hd, float scaling, float* part, int maxchunks,      \
                           const float* cosT, const float* sinT, int rope, u32* counters, float* out) {        \
        PDL_ENTRY();                                                                                           \
        attn_mma_body<KV, HD>(qkv, stride, pos, seq, seqtab, layer, nh, nkv, scaling, part, maxchunks, cosT, sinT, \
                          rope, counters, out, blockIdx.x, blockIdx.y, blockIdx.z);                            \
    }
#if IN_PART(9)
ATTN_MMA_ENTRY(32, u16, f16)
ATTN_MMA_ENTRY(64, u16, f16)
ATTN_MMA_ENTRY(128, u16, f16)
#endif
#if IN_PART(2)
ATTN_MMA_ENTRY(32, i8, q8)
ATTN_MMA_ENTRY(64, i8, q8)
ATTN_MMA_ENTRY(128, i8, q8)
#endif
#endif

#if __CUDA_ARCH__ >= 800
// ---------------------------------------------------------------------------------------------
// The persistent decode step: one sequence's one new token through every layer in a single
// launch of one co-resident wave of blocks (a cooperative launch), the phases of each layer
// separated by grid-wide barriers instead of kernel boundaries:
//   embedding | qkv (norm + quantize + GEMV) | attention (RoPE, KV store, chunks, merge) |
//   o (+= into h) | gate/up | down (+= into h) | ... | final norm (block 0).
// Each block copies its strips of the next product into shared memory (cp.async, two stages)
// while the current phase runs, so weights never wait on DRAM. The head runs as its own kernel
// next. Per layer the host passes 16 u64 (model/mega.rs, `Mega::build`): for qkv, o, gate/up and
// down the words, the row scales and rows | kgroups << 32; then the four norm weights.
// Measured slower than one kernel per operation on an H200 (BENCHMARKS.md, v10: each phase's
// norm, ~5 us, and the barriers, ~2 us, cost what the kernel boundaries did), so it is opt-in.
__device__ __forceinline__ u32 ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// bar[0] counts arrivals (reset by the last to arrive), bar[1] is the generation it advances.
// Release/acquire atomics order the blocks' writes around it (as CUTLASS's grid barrier does);
// __threadfence() would be a sequentially consistent fence (MEMBAR.SC.GPU), which also waits for
// the thread's own in-flight cp.async copies.
__device__ void grid_sync(u32* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 g = ld_acquire(bar + 1);
        u32 arrived;
        asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;" : "=r"(arrived) : "l"(bar) : "memory");
        if (arrived == gridDim.x - 1) {
            asm volatile("st.relaxed.gpu.global.u32 [%0], 0;" ::"l"(bar) : "memory");
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar + 1) : "memory");
        } else {
            while (ld_acquire(bar + 1) == g) {
            }
        }
    }
    __syncthreads();
}

struct MegaLin {
    const uint4* w;
    const float* s;
    int rows, kgroups;
};
__device__ __forceinline__ MegaLin mega_lin(const u64* L, int i) {
    MegaLin m;
    m.w = (const uint4*)L[3 * i];
    m.s = (const float*)L[3 * i + 1];
    u64 d = L[3 * i + 2];
    m.rows = (int)(u32)d;
    m.kgroups = (int)(d >> 32);
    return m;
}
__device__ __forceinline__ int mega_strips(const MegaLin& m) { return (m.rows + 15) / 16; }
// This block's strips of `m` (blockIdx.x, + gridDim.x, ...) copied into `buf` in shared memory
// by asynchronous copies, as one commit group (empty for a block without strips, so that every
// thread's groups stay counted alike). `m.w == 0`: nothing to copy.
__device__ __forceinline__ void mega_stage(const MegaLin& m, uint4* buf) {
    if (m.w) {
        int strips = mega_strips(m);
        size_t per = (size_t)m.kgroups * 32;
        int k = 0;
        for (int strip = blockIdx.x; strip < strips; strip += gridDim.x, k++) {
            const uint4* src = m.w + strip * per;
            uint4* dst = buf + k * per;
            for (size_t i = threadIdx.x; i < per; i += blockDim.x) {
                cp_async16_s((u32)__cvta_generic_to_shared(dst + i), src + i);
            }
        }
    }
    cp_async_commit();
}
// Norm (+ act(gate) * up for modes 1, 2) and quantization of the row x, then this block's
// strips of m from `buf`, once all but the most recent commit group have landed.
__device__ __forceinline__ u64 gtimer() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
// `acc3` (measurements only, block 0): running sums of the norm, the wait for the staged weights
// and the products.
// Once the row is quantized (its loads done, so that they do not queue behind the copies), the
// next product's strips start their copy into the other stage, `nbuf`.
__device__ __forceinline__ void mega_linear(const MegaLin& m, const uint4* buf, const float* x, const float* nw,
                                            int cols, float eps, int mode, float* out, int accumulate, i8* xs,
                                            float* xscale, int* xsum, float* red, int* ired, u64* acc3,
                                            const MegaLin& next, uint4* nbuf) {
    int strips = mega_strips(m);
    if ((int)blockIdx.x >= strips) {
        mega_stage(next, nbuf);
        return;
    }
    bool timing = acc3 && blockIdx.x == 0 && threadIdx.x == 0;
    u64 t0 = timing ? gtimer() : 0;
    int kpad = m.kgroups * 128;
    norm_quant_smem(x, nw, cols, kpad, eps, mode, xs, xscale, xsum, red, ired);
    mega_stage(next, nbuf);
    u64 t1 = timing ? gtimer() : 0;
    cp_async_wait<1>();
    __syncthreads();
    u64 t2 = timing ? gtimer() : 0;
    const uint4 none[4] = {};
    size_t per = (size_t)m.kgroups * 32;
    int k = 0;
    for (int strip = blockIdx.x; strip < strips; strip += gridDim.x, k++) {
        gemv_body<1, false, true>(buf + k * per, m.s, m.rows, m.kgroups, xs, kpad, xscale, xsum, 1, out, 0,
                                  accumulate, none, strip);
        __syncthreads();  // `red` and, after the last strip, `buf` are reused
    }
    if (timing) {
        u64 t3 = gtimer();
        acc3[0] += t1 - t0;
        acc3[1] += t2 - t1;
        acc3[2] += t3 - t2;
    }
}

template <class KV>
__device__ void decode_step_body(const u64* __restrict__ layers, int n_layers, const void* embed, int embed_type,
                                 const u32* tokens, const u32* pos, const u32* seq, const u32* seqtab, float* h,
                                 float* qkv, float* attn, float* gu, float* part, u32* counters,
                                 const float* cosT, const float* sinT, int hidden, int n_heads, int n_kv, int hd,
                                 int inter, float eps, float scaling, int glu_mode, int maxchunks,
                                 const float* out_norm, float* normed, u32* bar, int stage_off, int stage_len,
                                 u64* stamps) {
    __shared__ __align__(16) i8 xs[FUSED_MAX_COLS];
    __shared__ float xscale[1];
    __shared__ int xsum[1];
    __shared__ float red[32];
    __shared__ int ired[32];
    extern __shared__ __align__(16) float dyn[];
    // Dynamic shared memory: attention's scratch, then two weight stages of stage_len uint4.
    uint4* stage[2] = {(uint4*)((char*)dyn + stage_off), (uint4*)((char*)dyn + stage_off) + stage_len};
    int qd = n_heads * hd, kvd = n_kv * hd, qkv_dim = qd + 2 * kvd;
    // With `stamps` (measurements only): block 0 records the global timer at each barrier's
    // arrival and departure.
    int nstamp = 0;
    bool stamping = stamps != 0 && blockIdx.x == 0 && threadIdx.x == 0;
#define STAMP()                                                                         \
    do {                                                                                \
        if (stamping) stamps[nstamp] = gtimer();                                        \
        nstamp++;                                                                       \
    } while (0)
#define SYNC()          \
    do {                \
        STAMP();        \
        grid_sync(bar);          \
        STAMP();        \
    } while (0)
    // Past the stamps: per product (qkv, o, gate/up, down) sums of norm, wait and product time.
#define ACC3(i) (stamps ? stamps + 1 + 2 * (1 + 5 * n_layers) + 3 * (i) : (u64*)0)
    STAMP();
    // Products in order qkv, o, gate/up, down, layer after layer; product g computes from
    // stage g & 1, and once its row is quantized, product g + 1's copy into the other stage
    // starts (that stage's product g - 1 finished before the last barrier).
    MegaLin none;
    none.w = 0;
    mega_stage(mega_lin(layers, 0), stage[0]);
    {
        u32 tok = tokens[0];
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < hidden; c += gridDim.x * blockDim.x) {
            size_t i = (size_t)tok * hidden + c;
            h[c] = embed_type == 0 ? ((const float*)embed)[i]
                                   : embed_type == 1 ? h2f(((const u16*)embed)[i]) : bf2f(((const u16*)embed)[i]);
        }
    }
    SYNC();
    int p = pos[0];
    int nc = p / CHUNK + 1;
    for (int l = 0; l < n_layers; l++) {
        const u64* L = layers + 16 * l;
        MegaLin lq = mega_lin(L, 0), lo = mega_lin(L, 1), lg = mega_lin(L, 2), ld = mega_lin(L, 3);
        bool more = l + 1 < n_layers;
        MegaLin nq = more ? mega_lin(L + 16, 0) : none;
        const float* norms[4] = {(const float*)L[12], (const float*)L[13], (const float*)L[14], (const float*)L[15]};
        mega_linear(lq, stage[0], h, norms[0], hidden, eps, 0, qkv, 0, xs, xscale, xsum, red, ired, ACC3(0), lo,
                    stage[1]);
        SYNC();
        for (int item = blockIdx.x; item < nc * n_kv; item += gridDim.x) {
            attn_vec_body<KV, NW>(qkv, qkv_dim, pos, seq, seqtab, l, n_heads, n_kv, hd, scaling, part, maxchunks, cosT,
                              sinT, 1, counters, attn, item / n_kv, item % n_kv, 0);
            __syncthreads();
        }
        SYNC();
        mega_linear(lo, stage[1], attn, norms[1], qd, eps, 0, h, 1, xs, xscale, xsum, red, ired, ACC3(1), lg,
                    stage[0]);
        SYNC();
        mega_linear(lg, stage[0], h, norms[2], hidden, eps, 0, gu, 0, xs, xscale, xsum, red, ired, ACC3(2), ld,
                    stage[1]);
        SYNC();
        mega_linear(ld, stage[1], gu, norms[3], inter, eps, glu_mode, h, 1, xs, xscale, xsum, red, ired, ACC3(3),
                    nq, stage[0]);
        SYNC();
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    if (blockIdx.x == 0) final_norm_row<false>(h, out_norm, hidden, eps, normed, red);
#undef STAMP
#undef SYNC
#undef ACC3
}
#define DECODE_STEP(SFX, KV)                                                                                     \
    extern "C" __global__ void __launch_bounds__(NW * 32, 2) decode_step_##SFX(                                \
        const u64* layers, int n_layers, const void* embed, int embed_type, const u32* tokens, const u32* pos,  \
        const u32* seq, const u32* seqtab, float* h, float* qkv, float* attn, float* gu, float* part,          \
        u32* counters, const float* cosT, const float* sinT, int hidden, int n_heads, int n_kv, int hd,         \
        int inter, float eps, float scaling, int glu_mode, int maxchunks, const float* out_norm, float* normed,  \
        u32* bar, int stage_off, int stage_len, u64* stamps) {                                                \
        PDL_ENTRY();                                                                                            \
        decode_step_body<KV>(layers, n_layers, embed, embed_type, tokens, pos, seq, seqtab, h, qkv, attn, gu,  \
                             part, counters, cosT, sinT, hidden, n_heads, n_kv, hd, inter, eps, scaling,        \
                             glu_mode, maxchunks, out_norm, normed, bar, stage_off, stage_len, stamps);       \
    }
#if IN_PART(10)
DECODE_STEP(f32, float)
DECODE_STEP(f16, u16)
#endif
#endif

// ---------------------------------------------------------------------------------------------
// The head: logits[t][v] = dot(W[v], x[t]) for up to 8 rows of x at a time; one warp per
// vocabulary row, eight per block. Int8 rows carry a per-row scale.
struct I8T { typedef i8 T; };

// Eight values of a row as loaded (`Raw`), issued apart from their conversion (`expand`) so
// that a lane's loads are all in flight before it waits on the first.
template <class D>
struct HeadRaw;
template <>
struct HeadRaw<F32T> {
    struct R { float4 a, b; };
    static __device__ __forceinline__ R load(const float* w, size_t i) {
        return R{*(const float4*)(w + i), *(const float4*)(w + i + 4)};
    }
    static __device__ __forceinline__ void expand(const R& r, float* f) {
        f[0] = r.a.x; f[1] = r.a.y; f[2] = r.a.z; f[3] = r.a.w; f[4] = r.b.x; f[5] = r.b.y; f[6] = r.b.z; f[7] = r.b.w;
    }
};
template <>
struct HeadRaw<F16T> {
    typedef uint4 R;
    static __device__ __forceinline__ R load(const u16* w, size_t i) { return __ldg((const uint4*)(w + i)); }
    static __device__ __forceinline__ void expand(const R& v, float* f) {
        u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            f[2 * j] = h2f((u16)(u[j] & 0xffff));
            f[2 * j + 1] = h2f((u16)(u[j] >> 16));
        }
    }
};
template <>
struct HeadRaw<BF16T> {
    typedef uint4 R;
    static __device__ __forceinline__ R load(const u16* w, size_t i) { return __ldg((const uint4*)(w + i)); }
    static __device__ __forceinline__ void expand(const R& v, float* f) {
        u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            f[2 * j] = __uint_as_float(u[j] << 16);
            f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        }
    }
};
template <>
struct HeadRaw<I8T> {
    typedef uint2 R;
    static __device__ __forceinline__ R load(const i8* w, size_t i) { return __ldg((const uint2*)(w + i)); }
    // Exact, without I2F (a quarter-rate conversion: at 328 M per 2B4T token, ~80 us of the
    // GPU's conversion throughput): byte b + 128 placed in the mantissa of 2^23 is the float
    // 2^23 + b + 128.
    static __device__ __forceinline__ void expand(const R& v, float* f) {
        u32 u[2] = {v.x ^ 0x80808080u, v.y ^ 0x80808080u};
#pragma unroll
        for (int j = 0; j < 8; j++)
            f[j] = __int_as_float(__byte_perm(u[j >> 2], 0x4B000000u, 0x7440u + (j & 3))) - 8388736.0f;
    }
};

// One row of x (batch-1 decode; the host launches half the blocks): a warp takes two table rows,
// so every x value it loads serves both, with a lane's loads for both rows in flight before the
// first use, and fused multiply-adds into two accumulators per row. (One row per warp through
// head_body's 8-row loop was issue-bound at b1: ncu, int8 table, ~725 warp instructions per row,
// DRAM at 39%, 180 us; the f16 table took the same time.)
template <class D, int U>
__device__ void head_one(const typename D::T* W, const float* rscale, int vocab, int cols, const float* x,
                         float* logits) {
    int lane = threadIdx.x & 31;
    int v0 = (blockIdx.x * 8 + (threadIdx.x >> 5)) * 2;
    if (v0 >= vocab) return;
    int v1 = min(v0 + 1, vocab - 1);
    float sc0 = rscale ? rscale[v0] : 1.f, sc1 = rscale ? rscale[v1] : 1.f;
    const typename D::T* w0 = W + (size_t)v0 * cols;
    const typename D::T* w1 = W + (size_t)v1 * cols;
    float s0 = 0.f, t0 = 0.f, s1 = 0.f, t1 = 0.f;
    for (int c0 = lane * 8; c0 < cols; c0 += 256 * U) {
        typename HeadRaw<D>::R r0[U], r1[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (c0 + 256 * u < cols) {
                r0[u] = HeadRaw<D>::load(w0, c0 + 256 * u);
                r1[u] = HeadRaw<D>::load(w1, c0 + 256 * u);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + 256 * u;
            if (c >= cols) break;
            float f0[8], f1[8];
            HeadRaw<D>::expand(r0[u], f0);
            HeadRaw<D>::expand(r1[u], f1);
            const float4* xp = (const float4*)(x + c);
            float4 a = xp[0], b = xp[1];
            float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int k = 0; k < 8; k += 2) {
                s0 = __fmaf_rn(f0[k], xv[k], s0);
                t0 = __fmaf_rn(f0[k + 1], xv[k + 1], t0);
                s1 = __fmaf_rn(f1[k], xv[k], s1);
                t1 = __fmaf_rn(f1[k + 1], xv[k + 1], t1);
            }
        }
    }
    float a0 = warp_sum(s0 + t0), a1 = warp_sum(s1 + t1);
    if (lane == 0) {
        logits[v0] = a0 * sc0;
        if (v0 + 1 < vocab) logits[v0 + 1] = a1 * sc1;
    }
}

// `cols` is a multiple of 8 here (checked on the host; other widths take head_generic).
// Lane l takes columns l * 8 + 256 j (j = 0, 1, ...) in order, U loads in flight at a time
// (any U sums in the same order): 2 for f32; 5 for 16-bit rows and 10 for int8 ones, i.e. 2.5
// KB per warp and a 2,560-wide row in two rounds (16-bit) or one (int8) where two loads of
// 8 values (1 KB or 512 B per warp) took five.
template <class D, int U>
__device__ void head_body(const typename D::T* W, const float* rscale, int vocab, int cols, const float* x, int m,
                          float* logits) {
    PDL_ENTRY();
    if (m == 1) {
        head_one<D, U>(W, rscale, vocab, cols, x, logits);
        return;
    }
    int lane = threadIdx.x & 31;
    int v = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (v >= vocab) return;
    float acc[8];
#pragma unroll
    for (int t = 0; t < 8; t++) acc[t] = 0.f;
    size_t base = (size_t)v * cols;
    for (int c0 = lane * 8; c0 < cols; c0 += 256 * U) {
        typename HeadRaw<D>::R raw[U];
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c0 + 256 * u < cols) raw[u] = HeadRaw<D>::load(W, base + c0 + 256 * u);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + 256 * u;
            if (c >= cols) break;
            float f[8];
            HeadRaw<D>::expand(raw[u], f);
#pragma unroll
            for (int t = 0; t < 8; t++) {
                if (t < m) {
                    const float4* xp = (const float4*)(x + (size_t)t * cols + c);
                    float4 a = xp[0], b = xp[1];
                    acc[t] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x +
                              f[5] * b.y + f[6] * b.z + f[7] * b.w;
                }
            }
        }
    }
    float s = rscale ? rscale[v] : 1.f;
#pragma unroll
    for (int t = 0; t < 8; t++) {
        if (t < m) {
            float a = warp_sum(acc[t]);
            if (lane == 0) logits[(size_t)t * vocab + v] = a * s;
        }
    }
}
#if IN_PART(1)
extern "C" __global__ void head_f32(const float* W, const float* rs, int vocab, int cols, const float* x, int m,
                                    float* out) { head_body<F32T, 2>(W, rs, vocab, cols, x, m, out); }
extern "C" __global__ void __launch_bounds__(256, 3) head_f16(const u16* W, const float* rs, int vocab, int cols, const float* x, int m,
                                    float* out) { head_body<F16T, 5>(W, rs, vocab, cols, x, m, out); }
extern "C" __global__ void __launch_bounds__(256, 3) head_bf16(const u16* W, const float* rs, int vocab, int cols, const float* x, int m,
                                     float* out) { head_body<BF16T, 5>(W, rs, vocab, cols, x, m, out); }
extern "C" __global__ void __launch_bounds__(256, 3) head_i8(const i8* W, const float* rs, int vocab, int cols, const float* x, int m,
                                   float* out) { head_body<I8T, 10>(W, rs, vocab, cols, x, m, out); }
#endif

// The head of 16-bit tables for batches (2 or more rows) on the tensor cores, reading the table
// once per 64 rows instead of once per 8: mma.m16n8k16 with 16 vocabulary rows as A and 8 rows of
// x as B, f32 accumulators. x is first split by `split_rows_*` into two 16-bit parts, hi =
// round(x) and lo = round(x - hi), both multiplied into the same accumulators: the table's values
// are exact in the 16-bit format, so the only rounding left is lo's (about 2^-22 of x for f16,
// 2^-16 for bf16) and the accumulation's. (Int8 tables: `head_imma_i8` below.)
//
// Block: 8 warps, 32 vocabulary rows per warp (two m16 tiles), up to 64 rows of x (blockIdx.y).
// x goes through shared memory in 128-column chunks, two stages by cp.async: per row of x 256
// bytes of hi, 256 of lo and 64 of padding (so that the 8 lanes of a 16-byte load phase fall on
// distinct banks). Within each 32-column block, lane (g, t) loads columns 8t..8t+7 of its rows
// (16 bytes) and of x's rows: the k order inside the mma is a permutation of the columns, the
// same for A and B, so the dot products are unchanged.
#define HM_ROW 576
#define HM_STAGE (64 * HM_ROW)
// The warpgroup heads' planes of x (`head_wg_*`): row r's high part is plane row
// wg_plane_row(r), its low part 64 plane rows later (each 64-row block of x as 128 plane rows,
// its high parts first).
__device__ __forceinline__ size_t wg_plane_row(int r) { return (size_t)(r >> 6) * 128 + (r & 63); }
// Where byte c of plane row pr (rows of `row` bytes) goes where the planes are stored in the bulk
// head's stages' order (`wg_tile_swizzled` with 128-row tiles): tile (pr / 128, c / 128) as 128 x
// 128 contiguous bytes, its row r's 16-byte chunk kc at r x 128 + 16 (kc ^ (r % 8)).
__device__ __forceinline__ size_t wg_tiled_at(size_t pr, int c, int row) {
    size_t tile = (pr >> 7) * (size_t)(row >> 7) + (c >> 7);
    int r = (int)(pr & 127), kc = (c & 127) >> 4;
    return (tile * 128 + r) * 128 + ((kc ^ (r & 7)) << 4) + (c & 15);
}
// The split kernels' rows, 8 columns (32 bytes) at a time: chunk j of row xr into f. The first
// SPLIT_U chunks of each thread are loaded together before any is used (rows up to
// 8 SPLIT_U blockDim columns: one round trip to L2 rather than a chain of them; the loops one
// value at a time took ~7 us for 64 rows of 2,560).
#define SPLIT_U 2
__device__ __forceinline__ void load8(const float* xr, int j, float (&f)[8]) {
    float4 a = ((const float4*)xr)[2 * j], b = ((const float4*)xr)[2 * j + 1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
// Chunks j of row r (j = threadIdx.x, + blockDim.x, ...; `cols` % 8 == 0) through emit(j, f):
// the row's values where `live`, zeros else; the first SPLIT_U chunks from registers loaded at
// once.
template <class E>
__device__ __forceinline__ void split_chunks(const float* xr, bool live, int n8, const float (&f)[SPLIT_U][8], E emit) {
#pragma unroll
    for (int u = 0; u < SPLIT_U; u++) {
        int j = threadIdx.x + u * blockDim.x;
        if (j < n8) emit(j, f[u]);
    }
    for (int j = threadIdx.x + SPLIT_U * blockDim.x; j < n8; j += blockDim.x) {
        float g[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (live) load8(xr, j, g);
        emit(j, g);
    }
}
__device__ __forceinline__ void split_load(const float* xr, bool live, int n8, float (&f)[SPLIT_U][8]) {
#pragma unroll
    for (int u = 0; u < SPLIT_U; u++) {
        int j = threadIdx.x + u * blockDim.x;
#pragma unroll
        for (int t = 0; t < 8; t++) f[u][t] = 0.f;
        if (live && j < n8) load8(xr, j, f[u]);
    }
}
// out[(r * 2 + part) * cols + c]: hi (part 0) and lo (part 1) of x, rows m..mpad zero. PLANAR:
// in the warpgroup heads' planes (wg_plane_row). `cols` % 8 == 0.
template <bool BF, bool PLANAR = false>
__device__ void split_rows_body(const float* x, int m, int mpad, int cols, u16* out, bool tiled = false) {
    PDL_ENTRY();
    int r = blockIdx.x;
    if (r >= mpad) return;
    const float* xr = x + (size_t)r * cols;
    bool live = r < m;
    int n8 = cols / 8;
    float f[SPLIT_U][8];
    split_load(xr, live, n8, f);
    split_chunks(xr, live, n8, f, [&](int j, const float (&v8)[8]) {
        u16 hi[8], lo[8];
#pragma unroll
        for (int t = 0; t < 8; t++) {
            float v = v8[t];
            if (BF) {
                // Round to nearest even into bf16 (values here are finite).
                u32 u = __float_as_uint(v);
                hi[t] = (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
                float rest = v - __uint_as_float((u32)hi[t] << 16);
                u32 w = __float_as_uint(rest);
                lo[t] = (u16)((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
            } else {
                hi[t] = f2h(v);
                lo[t] = f2h(v - h2f(hi[t]));
            }
        }
        uint4 h4, l4;
        u32* hw = (u32*)&h4;
        u32* lw = (u32*)&l4;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            hw[t] = (u32)hi[2 * t] | ((u32)hi[2 * t + 1] << 16);
            lw[t] = (u32)lo[2 * t] | ((u32)lo[2 * t + 1] << 16);
        }
        int c = 8 * j;
        if (PLANAR && tiled) {
            size_t pr = wg_plane_row(r);
            *(uint4*)(out + wg_tiled_at(pr, 2 * c, 2 * cols) / 2) = h4;
            *(uint4*)(out + wg_tiled_at(pr + 64, 2 * c, 2 * cols) / 2) = l4;
            return;
        }
        size_t at = PLANAR ? wg_plane_row(r) * cols + c : (size_t)r * 2 * cols + c;
        size_t part = PLANAR ? (size_t)64 * cols : cols;
        *(uint4*)(out + at) = h4;
        *(uint4*)(out + at + part) = l4;
    });
}
#if IN_PART(1)
extern "C" __global__ void split_rows_f16(const float* x, int m, int mpad, int cols, u16* out) {
    split_rows_body<false>(x, m, mpad, cols, out);
}
extern "C" __global__ void split_rows_bf16(const float* x, int m, int mpad, int cols, u16* out) {
    split_rows_body<true>(x, m, mpad, cols, out);
}
#endif

#if __CUDA_ARCH__ >= 800
template <bool BF>
__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if (BF)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Stage chunk `ch` of the rows of x (hi and lo) into `buf`, rows 0..nrows.
__device__ __forceinline__ void head_stage(const u16* xhl, int cols, int ch, int nrows, char* buf) {
    for (int i = threadIdx.x; i < nrows * 32; i += blockDim.x) {
        int r = i >> 5, part = (i >> 4) & 1, piece = i & 15;
        const u16* src = xhl + ((size_t)r * 2 + part) * cols + ch * 128 + piece * 8;
        cp_async16_s((u32)__cvta_generic_to_shared(buf + r * HM_ROW + part * 256 + piece * 16), src);
    }
    cp_async_commit();
}
// `cols` % 128 == 0; xhl holds ceil(m / 8) * 8 rows (split_rows_*). NT: the block's tiles of 8
// rows, known at compile time, so that ptxas interleaves the 2 x NT independent chains of mma
// where a run-time check per tile had kept each tile's chains apart (batch 10 +4%, 16 +3.9%,
// 32 +3.6%, 48 +2%: BENCHMARKS.md session 20). Except at 8 tiles: interleaved, they need more than the 128
// registers of two blocks per SM (spills, -1% at batch 64; one block of 190 registers: -2.8%),
// so 8 tiles take the instantiation that checks each tile against a count known at run time
// only (NT 0).
template <class D, bool BF, int NT>
__device__ __forceinline__ void head_mma_tiles(const typename D::T* W, const float* rscale, int vocab, int cols,
                                               const u16* xhl, int t0, int mt, float* logits) {
    extern __shared__ __align__(16) char hsm[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    // NT 0: the tiles known at run time only (8 of them: see above).
    constexpr int TILES = NT ? NT : 8;
    const int nt = NT ? NT : (mt + 7) / 8;
    xhl += (size_t)t0 * 2 * cols;
    int v0 = blockIdx.x * 256 + warp * 32;
    // This lane's four table rows (two m16 tiles: g, g + 8), clamped inside the table.
    size_t rowoff[4];
#pragma unroll
    for (int i = 0; i < 4; i++) rowoff[i] = (size_t)min(v0 + 8 * i + g, vocab - 1) * cols + 8 * t;
    float acc[2][TILES][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int j = 0; j < TILES; j++) acc[a][j][0] = acc[a][j][1] = acc[a][j][2] = acc[a][j][3] = 0.f;
    int chunks = cols / 128, kbs = cols / 32;
    head_stage(xhl, cols, 0, nt * 8, hsm);
    // Eight table values of each of the lane's rows, loaded DEPTH k-blocks ahead of their use
    // (kbs is a multiple of 4).
    constexpr int DEPTH = 2;
    auto load = [&](int i, int kb) { return __ldg((const uint4*)(W + rowoff[i] + (size_t)kb * 32)); };
    uint4 pf[DEPTH][4];
#pragma unroll
    for (int d = 0; d < DEPTH; d++)
#pragma unroll
        for (int i = 0; i < 4; i++) pf[d][i] = load(i, d);
    for (int kb0 = 0; kb0 < kbs; kb0 += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            int kb = kb0 + d;
            if ((kb & 3) == 0) {
                int ch = kb >> 2;
                // This chunk landed; every warp is done with the other stage, which takes the next.
                cp_async_wait<0>();
                __syncthreads();
                if (ch + 1 < chunks) head_stage(xhl, cols, ch + 1, nt * 8, hsm + ((ch + 1) & 1) * HM_STAGE);
            }
            uint4 cur[4];
#pragma unroll
            for (int i = 0; i < 4; i++) cur[i] = pf[d][i];
            if (kb + DEPTH < kbs) {
#pragma unroll
                for (int i = 0; i < 4; i++) pf[d][i] = load(i, kb + DEPTH);
            }
            const char* xb = hsm + ((kb >> 2) & 1) * HM_STAGE + (kb & 3) * 64 + 16 * t + g * HM_ROW;
#pragma unroll
            for (int j = 0; j < TILES; j++) {
                if (j < nt) {
                    uint4 hi = *(const uint4*)(xb + j * 8 * HM_ROW);
                    uint4 lo = *(const uint4*)(xb + j * 8 * HM_ROW + 256);
#pragma unroll
                    for (int a = 0; a < 2; a++) {
                        // Rows g (cur[2a]) and g + 8 (cur[2a + 1]); step 0 takes words x, y, step 1 z, w.
                        mma16816<BF>(acc[a][j], cur[2 * a].x, cur[2 * a + 1].x, cur[2 * a].y, cur[2 * a + 1].y, hi.x, hi.y);
                        mma16816<BF>(acc[a][j], cur[2 * a].z, cur[2 * a + 1].z, cur[2 * a].w, cur[2 * a + 1].w, hi.z, hi.w);
                        mma16816<BF>(acc[a][j], cur[2 * a].x, cur[2 * a + 1].x, cur[2 * a].y, cur[2 * a + 1].y, lo.x, lo.y);
                        mma16816<BF>(acc[a][j], cur[2 * a].z, cur[2 * a + 1].z, cur[2 * a].w, cur[2 * a + 1].w, lo.z, lo.w);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < 2; a++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int v = v0 + 16 * a + 8 * half + g;
            if (v >= vocab) continue;
            float s = rscale ? rscale[v] : 1.f;
#pragma unroll
            for (int j = 0; j < TILES; j++) {
                int tok = j * 8 + 2 * t;
                if (tok < mt) logits[(size_t)(t0 + tok) * vocab + v] = acc[a][j][2 * half] * s;
                if (tok + 1 < mt) logits[(size_t)(t0 + tok + 1) * vocab + v] = acc[a][j][2 * half + 1] * s;
            }
        }
    }
}
template <class D, bool BF>
__device__ void head_mma_body(const typename D::T* W, const float* rscale, int vocab, int cols, const u16* xhl, int m,
                              float* logits) {
    PDL_ENTRY();
    int t0 = blockIdx.y * 64;
    int mt = min(m - t0, 64);
    switch ((mt + 7) / 8) {
#define HEAD_TILES(NT)                                                                \
    case NT:                                                                          \
        head_mma_tiles<D, BF, NT>(W, rscale, vocab, cols, xhl, t0, mt, logits); \
        break;
        HEAD_TILES(1)
        HEAD_TILES(2)
        HEAD_TILES(3)
        HEAD_TILES(4)
        HEAD_TILES(5)
        HEAD_TILES(6)
        HEAD_TILES(7)
#undef HEAD_TILES
    default:
        head_mma_tiles<D, BF, 0>(W, rscale, vocab, cols, xhl, t0, mt, logits);
    }
}
#define HEAD_MMA_ENTRY(NAME, T, D, BF)                                                                              \
    extern "C" __global__ void __launch_bounds__(256, 2)                                                          \
        NAME(const T* W, const float* rs, int vocab, int cols, const u16* xhl, int m, float* out) {               \
        head_mma_body<D, BF>(W, rs, vocab, cols, xhl, m, out);                                                    \
    }
#if IN_PART(11)
HEAD_MMA_ENTRY(head_mma_f16, u16, F16T, false)
HEAD_MMA_ENTRY(head_mma_bf16, u16, BF16T, true)
#endif

// The int8 table's head for batches on the integer tensor cores (mma.m16n8k32, s32 sums): x's
// rows as 16-bit integers q = rint(x / s), s = max|x| / 32767 per row (`split_rows_i16`), in two
// int8 planes, hi = q >> 8 (signed) and lo = q & 255 (unsigned), each multiplied into its own
// exact integer sums, so that sum(w x) = s (256 hi_sum + lo_sum) up to q's rounding (at most s / 2
// per element, 1.5e-5 of the row's largest magnitude: far below the table's own int8 rounding).
// Against the 16-bit tensor-core head applied to the int8 table (x as two f16 parts, the table
// converted to f16, m16n8k16: 285 us at 64 rows), half the mma instructions for the same
// products, no conversions of the table, and one independent sum per plane and tile for every
// k-block instead of a chain of four (BENCHMARKS.md, session 26).
//
// Plane layout (`split_rows_i16`): per row 2 * cols bytes, for every 8 columns 8 bytes of hi
// then 8 of lo; then the mpad rows' scales s (f32). Block: 8 warps of 16 vocabulary rows (one
// m16 tile), up to 64 rows of x (blockIdx.y; tiles of 8 rows known at compile time: NT, so
// that the 2 x NT independent sums interleave). x goes through shared memory in 128-column
// chunks, HI_ROW bytes per row (256 of planes and 16 of skew, so that the 8 lanes of a 16-byte
// load phase fall on distinct banks). Within each 64-column block lane (g, t) takes columns
// 16t..16t+15 of its two table rows and the same columns of x's planes; k-block 0 of the mma
// takes each lane's first 8 of them, k-block 1 the other 8 (a permutation of the columns, the
// same for A and B, so the sums are unchanged). Two m16 tiles per warp and 32 rows of x per
// block (each fragment of x serving twice the rows) measured 1-2% slower at 64 rows.
//
// The table goes by cp.async (asking L2 for the 256 bytes around each piece) into slots of the
// lane's own in shared memory, HI_D blocks ahead of its use, where loads into registers two
// blocks ahead (all the registers left) had left the warps waiting on them for half of ncu's
// samples. Now they wait on their own mma and shared loads instead: decode steps of 2-16 rows
// ~1% faster, 64 rows level (BENCHMARKS.md, session 30). x goes in HI_S stages, chunk c in the
// copy group of table block 2c; the first table blocks go out before the wait on the previous
// kernel (they do not depend on it).
#define HI_ROW 272
#define HI_STAGE (64 * HI_ROW)
#define HI_D 4
#define HI_SLOTS (HI_D + 1)
#define HI_S (HI_D / 2 + 1)
// The planes and scales of rows 0..mpad of x: rows m..mpad zero (scale 0); a row holding a value
// that is not finite gets the scale NaN (its logits NaN, as the 16-bit head's would be).
// PLANAR (`head_wg_i8`): in the warpgroup heads' planes (wg_plane_row), rows of `cols` bytes;
// the scales after the last block.
template <bool PLANAR = false>
__device__ void split_rows_i16_body(const float* x, int m, int mpad, int cols, unsigned char* out,
                                    bool tiled = false) {
    PDL_ENTRY();
    __shared__ float red[32];
    int r = blockIdx.x;
    if (r >= mpad) return;
    const float* xr = x + (size_t)r * cols;
    bool live = r < m;
    int n8 = cols / 8;
    float f[SPLIT_U][8];
    split_load(xr, live, n8, f);
    float mx = 0.f, bad = 0.f;
    split_chunks(xr, live, n8, f, [&](int, const float (&v8)[8]) {
#pragma unroll
        for (int t = 0; t < 8; t++) {
            float a = fabsf(v8[t]);
            if (a <= 3.402823466e38f)
                mx = fmaxf(mx, a);
            else
                bad = 1.f;
        }
    });
    mx = block_max(mx, red);
    bad = block_max(bad, red);
    float s = bad > 0.f ? __int_as_float(0x7fc00000) : mx / 32767.f;
    split_chunks(xr, live, n8, f, [&](int c8, const float (&v8)[8]) {
        u32 w[4] = {0u, 0u, 0u, 0u};
        if (live && s > 0.f) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                int q = __float2int_rn(__fdiv_rn(v8[j], s));
                q = max(-32767, min(32767, q));
                w[j >> 2] |= (u32)((q >> 8) & 0xff) << (8 * (j & 3));
                w[2 + (j >> 2)] |= (u32)(q & 0xff) << (8 * (j & 3));
            }
        }
        if (PLANAR && tiled) {
            size_t pr = wg_plane_row(r);
            *(uint2*)(out + wg_tiled_at(pr, c8 * 8, cols)) = make_uint2(w[0], w[1]);
            *(uint2*)(out + wg_tiled_at(pr + 64, c8 * 8, cols)) = make_uint2(w[2], w[3]);
        } else if (PLANAR) {
            unsigned char* hi = out + wg_plane_row(r) * cols + c8 * 8;
            *(uint2*)hi = make_uint2(w[0], w[1]);
            *(uint2*)(hi + (size_t)64 * cols) = make_uint2(w[2], w[3]);
        } else {
            *(uint4*)(out + (size_t)r * 2 * cols + c8 * 16) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    });
    if (threadIdx.x == 0) ((float*)(out + (size_t)mpad * 2 * cols))[r] = s;
}
#if IN_PART(1)
extern "C" __global__ void split_rows_i16(const float* x, int m, int mpad, int cols, unsigned char* out) {
    split_rows_i16_body(x, m, mpad, cols, out);
}
#endif
// Copies chunk `ch` (128 columns) of the planes of rows 0..nrows into `buf` (cp.async, into the
// caller's group).
__device__ __forceinline__ void head_i16_stage(const unsigned char* xq, int cols, int ch, int nrows, char* buf) {
    for (int i = threadIdx.x; i < nrows * 16; i += blockDim.x) {
        int r = i >> 4, piece = i & 15;
        cp_async16_s((u32)__cvta_generic_to_shared(buf + r * HI_ROW + piece * 16),
                     xq + (size_t)r * 2 * cols + ch * 256 + piece * 16);
    }
}
// The logits of a warp's 16 table rows from v16 by NT 8-row tiles of x from t0 (mt rows wanted),
// out of the sums over x's high and low planes in the mma fragment layout: sums(j, c) is element
// c of tile j (table row g + 8 (c / 2), x row 8 j + 2 t + c % 2) as (high, low).
// `each(slot, tok, v, logit)` for every logit this thread holds (slot = 2 j + c % 2: the x row's
// place among the thread's 2 NT rows).
template <int NT, class F, class G>
__device__ __forceinline__ void head_i16_each(int vocab, int v16, int t0, int mt, const float* rscale,
                                              const float* xs, F sums, G each) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int v = v16 + 8 * half + g;
        if (v >= vocab) continue;
        float s = rscale[v];
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int tok = j * 8 + 2 * t + e;
                if (tok < mt) {
                    int2 hl = sums(j, 2 * half + e);
                    long long sum = (long long)hl.x * 256 + hl.y;
                    each(2 * j + e, tok, v, (float)sum * (s * xs[t0 + tok]));
                }
            }
        }
    }
}
template <int NT, class F>
__device__ __forceinline__ void head_i16_store(float* logits, int vocab, int v16, int t0, int mt,
                                               const float* rscale, const float* xs, F sums) {
    head_i16_each<NT>(vocab, v16, t0, mt, rscale, xs, sums,
                      [&](int, int tok, int v, float l) { logits[(size_t)(t0 + tok) * vocab + v] = l; });
}
template <int NT>
__device__ __forceinline__ void head_imma_tiles(const i8* W, const float* rscale, int vocab, int cols,
                                                const unsigned char* xq, const float* xs, int t0, int mt,
                                                float* logits) {
    extern __shared__ __align__(16) char hsm[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    xq += (size_t)t0 * 2 * cols;
    int v0 = blockIdx.x * 128 + warp * 16;
    // This lane's two table rows (g, g + 8), clamped inside the table.
    const i8* w0 = W + (size_t)min(v0 + g, vocab - 1) * cols + 16 * t;
    const i8* w1 = W + (size_t)min(v0 + 8 + g, vocab - 1) * cols + 16 * t;
    int acc[2][NT][4];  // [hi / lo][8-row tile of x]
#pragma unroll
    for (int p = 0; p < 2; p++)
#pragma unroll
        for (int j = 0; j < NT; j++) acc[p][j][0] = acc[p][j][1] = acc[p][j][2] = acc[p][j][3] = 0;
    int chunks = cols / 128, nb = cols / 64;
    // The lane's own table slots: HI_SLOTS of (row g, row g + 8) x 16 bytes, each piece's 32
    // lanes side by side (no bank conflicts); block b in slot b % HI_SLOTS.
    u32 ts = (u32)__cvta_generic_to_shared(hsm + HI_S * HI_STAGE) + (u32)(warp * HI_SLOTS * 1024 + lane * 16);
    auto table = [&](int b) {
        if (b < nb) {
            u32 d = ts + (u32)(b % HI_SLOTS) * 1024;
            cp_async16_l2(d, w0 + (size_t)b * 64);
            cp_async16_l2(d + 512, w1 + (size_t)b * 64);
        }
    };
    // Group k holds table block k (or an earlier group does) and, for even k, x's chunk k / 2.
#pragma unroll
    for (int k = 0; k < HI_D; k++) table(k);
    PDL_ENTRY();
#pragma unroll
    for (int k = 0; k < HI_D; k++) {
        if ((k & 1) == 0 && k / 2 < chunks) head_i16_stage(xq, cols, k / 2, NT * 8, hsm + (k / 2) * HI_STAGE);
        cp_async_commit();
    }
    for (int b = 0; b < nb; b++) {
        // Groups 0..b landed (this thread's copies); at even b the barrier publishes x's chunk
        // b / 2 and says every warp is done with blocks < b, so chunk b / 2 + HI_D / 2 may take
        // the stage of chunk b / 2 - 1.
        cp_async_wait<HI_D - 1>();
        if ((b & 1) == 0) {
            __syncthreads();
            int ch = b / 2 + HI_D / 2;
            if (ch < chunks) head_i16_stage(xq, cols, ch, NT * 8, hsm + (ch % HI_S) * HI_STAGE);
        }
        u32 slot = ts + (u32)(b % HI_SLOTS) * 1024;
        uint4 a0 = ld_shared_v4(slot), a1 = ld_shared_v4(slot + 512);
        // Block b + HI_D into the slot block b - 1 used (its values went into last block's mma).
        table(b + HI_D);
        cp_async_commit();
        const char* xb = hsm + ((b >> 1) % HI_S) * HI_STAGE + (b & 1) * 128 + 32 * t + g * HI_ROW;
#pragma unroll
        for (int j = 0; j < NT; j++) {
            uint4 p = *(const uint4*)(xb + j * 8 * HI_ROW);       // columns 16t..16t+7: hi, lo
            uint4 q = *(const uint4*)(xb + j * 8 * HI_ROW + 16);  // columns 16t+8..16t+15
            imma_s8<false>(acc[0][j], a0.x, a1.x, a0.y, a1.y, p.x, p.y);
            imma_s8<true>(acc[1][j], a0.x, a1.x, a0.y, a1.y, p.z, p.w);
            imma_s8<false>(acc[0][j], a0.z, a1.z, a0.w, a1.w, q.x, q.y);
            imma_s8<true>(acc[1][j], a0.z, a1.z, a0.w, a1.w, q.z, q.w);
        }
    }
    cp_async_wait<0>();
    head_i16_store<NT>(logits, vocab, v0, t0, mt, rscale, xs,
                       [&](int j, int c) { return make_int2(acc[0][j][c], acc[1][j][c]); });
}
// `cols` % 128 == 0; xq: `split_rows_i16`'s planes and scales of ceil(m / 8) * 8 rows. Grid:
// (ceil(vocab / 128), ceil(m / 64)).
#if IN_PART(7)
extern "C" __global__ void __launch_bounds__(256, 2)
    head_imma_i8(const i8* W, const float* rs, int vocab, int cols, const unsigned char* xq, int m, float* out) {
    int t0 = blockIdx.y * 64, mt = min(m - t0, 64);
    const float* xs = (const float*)(xq + (size_t)((m + 7) / 8 * 8) * 2 * cols);
    switch ((mt + 7) / 8) {
#define HEAD_IMMA_TILES(NT)                                           \
    case NT:                                                          \
        head_imma_tiles<NT>(W, rs, vocab, cols, xq, xs, t0, mt, out); \
        break;
        HEAD_IMMA_TILES(1)
        HEAD_IMMA_TILES(2)
        HEAD_IMMA_TILES(3)
        HEAD_IMMA_TILES(4)
        HEAD_IMMA_TILES(5)
        HEAD_IMMA_TILES(6)
        HEAD_IMMA_TILES(7)
        HEAD_IMMA_TILES(8)
#undef HEAD_IMMA_TILES
    }
}
#endif
#endif

// Any width, f32 weights (fixtures with odd hidden sizes): one warp per vocabulary row.
#if IN_PART(1)
extern "C" __global__ void head_generic_f32(const float* W, int vocab, int cols, const float* x, int m,
                                            float* logits) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int v = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (v >= vocab) return;
    for (int t = 0; t < m; t++) {
        float a = 0.f;
        for (int c = lane; c < cols; c += 32) a += W[(size_t)v * cols + c] * x[(size_t)t * cols + c];
        a = warp_sum(a);
        if (lane == 0) logits[(size_t)t * vocab + v] = a;
    }
}
#endif

// Greedy sampling on the device: out[t] = the first index of the largest logit of row t (NaN
// never wins; a row with no number above -inf gives 0, as the host's argmax). Each thread scans
// its indices in increasing order (strict >, so the first of equal values stays); rows whose
// width is a multiple of 4 are read with 16-byte loads, 8 in flight per thread (one load at a
// time took ~50 us for a 128k vocabulary).
__device__ __forceinline__ void argmax_take(float v, u32 i, float& best, u32& idx) {
    if (v > best) { best = v; idx = i; }
}
// The first index of the largest value of row[lo..hi) seen by this thread (lo and hi multiples
// of 4 where `vec`).
__device__ void argmax_scan(const float* row, int lo, int hi, bool vec, float& best, u32& idx) {
    best = -INFINITY;
    idx = 0xffffffffu;
    if (vec) {
        const float4* r4 = (const float4*)(row + lo);
        int n4 = (hi - lo) / 4;
        const int U = 8;
        for (int base = threadIdx.x; base < n4; base += U * blockDim.x) {
            float4 v[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int j = base + u * blockDim.x;
                v[u] = j < n4 ? __ldg(r4 + j) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                u32 j = (u32)lo + 4u * (u32)(base + u * blockDim.x);
                argmax_take(v[u].x, j, best, idx);
                argmax_take(v[u].y, j + 1, best, idx);
                argmax_take(v[u].z, j + 2, best, idx);
                argmax_take(v[u].w, j + 3, best, idx);
            }
        }
    } else {
        for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) argmax_take(row[i], i, best, idx);
    }
}
// The block's choice: thread 0's (best, idx), also left in bv[0], bi[0].
__device__ void argmax_block(float& best, u32& idx, float* bv, u32* bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL, best, o);
        u32 oi = __shfl_xor_sync(FULL, idx, o);
        if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = best; bi[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) { best = bv[w]; idx = bi[w]; }
        bv[0] = best;
        bi[0] = idx;
    }
}
#if IN_PART(1)
extern "C" __global__ void argmax_rows(const float* logits, int vocab, u32* out) {
    PDL_ENTRY();
    __shared__ float bv[32];
    __shared__ u32 bi[32];
    float best;
    u32 idx;
    argmax_scan(logits + (size_t)blockIdx.x * vocab, 0, vocab, (vocab & 3) == 0, best, idx);
    argmax_block(best, idx, bv, bi);
    if (threadIdx.x == 0) out[blockIdx.x] = idx == 0xffffffffu ? 0u : idx;
}
#endif
#if __CUDA_ARCH__ >= 900
// The same choice for row blockIdx.y by a cluster of gridDim.x blocks, each scanning its share of
// the row (multiples of 4 values), merged in block 0 through distributed shared memory: one
// round of loads per thread for a 128k vocabulary instead of four in one block (~9 us).
#if IN_PART(1)
extern "C" __global__ void __launch_bounds__(1024) argmax_cluster(const float* logits, int vocab, u32* out) {
    PDL_ENTRY();
    __shared__ float bv[32];
    __shared__ u32 bi[32];
    int per = ((vocab + gridDim.x - 1) / gridDim.x + 3) & ~3;
    int lo = min(vocab, (int)blockIdx.x * per), hi = min(vocab, lo + per);
    float best;
    u32 idx;
    argmax_scan(logits + (size_t)blockIdx.y * vocab, lo, hi, (vocab & 3) == 0, best, idx);
    argmax_block(best, idx, bv, bi);
    cluster_sync();
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        for (int k = 1; k < (int)gridDim.x; k++) {
            float v = cluster_load(bv, k);
            u32 i = __float_as_uint(cluster_load((const float*)bi, k));
            if (v > best || (v == best && i < idx)) { best = v; idx = i; }
        }
        out[blockIdx.y] = idx == 0xffffffffu ? 0u : idx;
    }
    cluster_sync_relaxed();
}
#endif
#endif

// ---------------------------------------------------------------------------------------------
// Top-k candidates on the device: the k (<= TOPK_MAX) largest logits of row t with their ids,
// best first, ordered exactly as the host's `ops::top_k` orders them (f32 total order, ties to
// the lower id, NaN last). One block per row: a radix select over the logits' order-preserving
// keys (four 8-bit digits, histograms with warp-aggregated shared-memory atomics) finds the k-th
// key; one pass in index order gathers every larger key and the first ties; the <= k survivors
// are ranked by comparison.
#define TOPK_MAX 256
__device__ __forceinline__ u32 order_key(float f) {
    u32 b = __float_as_uint(f);
    if (f != f) return 0u;  // NaN: below every number
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

#if IN_PART(1)
extern "C" __global__ void __launch_bounds__(1024) topk_rows(const float* logits, int vocab, int k, u32* ids,
                                                             float* vals) {
    PDL_ENTRY();
    __shared__ u32 hist[256];
    __shared__ u32 wsum[32];
    __shared__ u32 s_prefix, s_remaining, s_count, s_ties;
    __shared__ u32 c_key[TOPK_MAX], c_id[TOPK_MAX];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    u32 prefix = 0, mask = 0, remaining = (u32)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int base = 0; base < vocab; base += blockDim.x) {
            int i = base + tid;
            u32 key = i < vocab ? order_key(row[i]) : 0u;
            bool in = i < vocab && (key & mask) == prefix;
            u32 digit = in ? (key >> shift) & 255u : 256u + lane;  // outsiders never match
            u32 peers = __match_any_sync(FULL, digit);
            if (in && (__ffs(peers) - 1) == lane) atomicAdd(&hist[digit], __popc(peers));
        }
        __syncthreads();
        if (tid == 0) {
            u32 above = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (above + hist[b] >= remaining) break;
                above += hist[b];
            }
            s_prefix = prefix | ((u32)b << shift);
            s_remaining = remaining - above;
        }
        __syncthreads();
        prefix = s_prefix;
        remaining = s_remaining;
        mask |= 255u << shift;
    }
    // prefix is the k-th largest key; `remaining` of the keys equal to it are taken (the first by
    // index), with every larger key (k - remaining of them).
    if (tid == 0) {
        s_count = 0;
        s_ties = 0;
    }
    __syncthreads();
    for (int base = 0; base < vocab; base += blockDim.x) {
        int i = base + tid;
        u32 key = i < vocab ? order_key(row[i]) : 0u;
        bool gt = i < vocab && key > prefix;
        bool eq = i < vocab && key == prefix;
        if (gt) {
            u32 slot = atomicAdd(&s_count, 1u);
            c_key[slot] = key;
            c_id[slot] = (u32)i;
        }
        u32 bal = __ballot_sync(FULL, eq);
        if (lane == 0) wsum[warp] = __popc(bal);
        __syncthreads();
        u32 before = s_ties;
        for (int w = 0; w < warp; w++) before += wsum[w];
        u32 rank = before + __popc(bal & ((1u << lane) - 1u));
        if (eq && rank < remaining) {
            u32 slot = (u32)k - remaining + rank;
            c_key[slot] = key;
            c_id[slot] = (u32)i;
        }
        __syncthreads();
        if (tid == 0) {
            u32 all = 0;
            for (int w = 0; w < nw; w++) all += wsum[w];
            s_ties += all;
        }
        __syncthreads();
    }
    if (tid < k) {
        u32 key = c_key[tid], id = c_id[tid];
        int r = 0;
        for (int j = 0; j < k; j++) r += (c_key[j] > key) || (c_key[j] == key && c_id[j] < id);
        size_t o = (size_t)blockIdx.x * k + r;
        ids[o] = id;
        vals[o] = row[id];
    }
}
#endif

// The heads over 33-64 rows of x per block on Hopper's warpgroup products (`wgmma`, sm_90a:
// this part compiles for `sm_90a` on sm_90 GPUs, and holds nothing elsewhere). The `mma.sync`
// heads are bound by each warp's chain of shared loads and mma at 64 rows (BENCHMARKS.md,
// session 30); here each warpgroup's product of 64 table rows by x's two planes (64 rows each)
// reads both operands from shared memory through descriptors: per 32 bytes of columns one
// instruction per plane instead of 16 mma and their fragment loads per warp. A block: two
// warpgroups that multiply (128 table rows) and one that copies both operands by cp.async into
// WG_STAGES stages of WG_KC bytes of columns (`WgLayout`). The int8 table: the same integer sums
// as `head_imma_i8` (exact in s32) and the same epilogue, so the same logits; the 16-bit tables:
// x's two 16-bit parts as `head_mma_*` splits them, summed in f32.
// x: `split_rows_i16p` / `split_rows_f16p` / `split_rows_bf16p`'s planes (PLANAR). Grid:
// (ceil(vocab / 128), ceil(m / 64)).
#if IN_PART(12)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_KC 128
// Where piece (row r, 16-byte column chunk kc) of a stage's operand of ROWS rows goes, and the
// descriptor of the 64 x 32 slice at column step s of its 64 rows from r0: the 128-byte swizzle
// (rows of 128 bytes, chunk kc of row r at place kc ^ (r % 8), 8-row groups 1,024 bytes apart;
// the stages 1,024-byte aligned). The 8 pieces of a row that 8 consecutive copying threads write
// fall in 8 different banks, and so do the tensor cores' reads. (Without a swizzle, as core
// matrices of 8 rows x 16 bytes side by side, the same kernel took 345 us instead of 131 at 64
// rows of 2B4T's head: BENCHMARKS.md, session 39.)
template <int ROWS>
struct WgLayout {
    static constexpr u32 BYTES = ROWS * 128;
    static __device__ __forceinline__ u32 at(int r, int kc) { return (u32)(r * 128 + ((kc ^ (r & 7)) << 4)); }
    static __device__ __forceinline__ u64 desc(u32 tile, int r0, int s) {
        u32 a = tile + (u32)(r0 * 128 + 32 * s);
        // Start address, leading offset (unused with this swizzle: 16), stride offset 1,024,
        // swizzle mode 1 (128 bytes).
        return (u64)((a & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
    }
};
// d += a (64 x K) * b (K x 64), both from shared memory by descriptor, d in the warpgroup's
// accumulator layout (below): SHAPE the instruction's k and types, TAIL its operands after the
// predicate (the 16-bit forms' scales and transposes), C the accumulators' constraint.
#define WGMMA_64X64(SHAPE, TAIL, C)                                                                                  \
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, 1, 0;\n\t"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n64" SHAPE " {"                                                    \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                            \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                    \
                 "}, %32, %33, p" TAIL ";\n\t}"                                                                      \
                 : C(d[0]), C(d[1]), C(d[2]), C(d[3]), C(d[4]), C(d[5]), C(d[6]), C(d[7]), C(d[8]), C(d[9]),         \
                   C(d[10]), C(d[11]), C(d[12]), C(d[13]), C(d[14]), C(d[15]), C(d[16]), C(d[17]), C(d[18]), C(d[19]), \
                   C(d[20]), C(d[21]), C(d[22]), C(d[23]), C(d[24]), C(d[25]), C(d[26]), C(d[27]), C(d[28]), C(d[29]), \
                   C(d[30]), C(d[31])                                                                                \
                 : "l"(da), "l"(db))
// k = 32, s8 x (s8 or u8), s32 sums.
__device__ __forceinline__ void wgmma_s8s8(int (&d)[32], u64 da, u64 db) { WGMMA_64X64("k32.s32.s8.s8", "", "+r"); }
__device__ __forceinline__ void wgmma_s8u8(int (&d)[32], u64 da, u64 db) { WGMMA_64X64("k32.s32.s8.u8", "", "+r"); }
// k = 16, 16-bit floats, f32 sums.
__device__ __forceinline__ void wgmma_f16(float (&d)[32], u64 da, u64 db) {
    WGMMA_64X64("k16.f32.f16.f16", ", 1, 1, 0, 0", "+f");
}
__device__ __forceinline__ void wgmma_bf16(float (&d)[32], u64 da, u64 db) {
    WGMMA_64X64("k16.f32.bf16.bf16", ", 1, 1, 0, 0", "+f");
}

// The warpgroup heads' tables: bytes per element, the accumulators, one 32-byte column step's
// products of a warpgroup's 64 table rows by x's high and low planes (descriptors), and the
// logits from the sums. The int8 table: integer planes, s32 sums (exact), as `head_imma_i8`. The
// 16-bit tables: x's two 16-bit parts summed into one f32 accumulator, as `head_mma_*`.
struct WgI8 {
    static constexpr int ELEM = 1;
    struct Acc {
        int d[2][32];
    };
    static __device__ __forceinline__ void step(Acc& a, u64 da, u64 dhi, u64 dlo) {
        wgmma_s8s8(a.d[0], da, dhi);
        wgmma_s8u8(a.d[1], da, dlo);
    }
    template <class G>
    static __device__ __forceinline__ void each(const Acc& a, int vocab, int v16, int t0, int mt, const float* rs,
                                                const float* xs, G g) {
        head_i16_each<8>(vocab, v16, t0, mt, rs, xs,
                         [&](int j, int c) { return make_int2(a.d[0][4 * j + c], a.d[1][4 * j + c]); }, g);
    }
};
template <bool BF>
struct Wg16 {
    static constexpr int ELEM = 2;
    struct Acc {
        float d[32];
    };
    static __device__ __forceinline__ void step(Acc& a, u64 da, u64 dhi, u64 dlo) {
        if (BF) {
            wgmma_bf16(a.d, da, dhi);
            wgmma_bf16(a.d, da, dlo);
        } else {
            wgmma_f16(a.d, da, dhi);
            wgmma_f16(a.d, da, dlo);
        }
    }
    template <class G>
    static __device__ __forceinline__ void each(const Acc& a, int vocab, int v16, int t0, int mt, const float* rs,
                                                const float*, G f) {
        int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int v = v16 + 8 * half + g;
            if (v >= vocab) continue;
            float s = rs ? rs[v] : 1.f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int tok = j * 8 + 2 * t + e;
                    if (tok < mt) f(2 * j + e, tok, v, a.d[4 * j + 2 * half + e] * s);
                }
            }
        }
    }
};

// Roles: warpgroups 0 and 1 multiply (64 table rows each), warpgroup 2 copies. The copier's
// cp.async writes go through the generic proxy and wgmma reads through the async one, so the
// multiplying threads fence the proxies after the barrier that says a stage landed: a fence in
// a thread with copies still in flight waits for them (MEMBAR), which in one role per thread had
// made the pipeline one stage deep. Named barriers: 1 and 3 (a stage landed, by the stage's
// parity), 2 (a stage is free).
#define WG_THREADS 384
__device__ __forceinline__ void named_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}
// The warpgroup heads' logits into out (`m` x `vocab`), or with `keys` their greedy choice: each
// logit as a key that orders as the argmax kernels choose (the larger value, then the lower
// index; NaN and -inf never, both zeros equal; 0: none), the block's 128 table rows' best per x
// row merged by 64-bit atomic max into keys[t0 + row] (zeroed by the split kernel) and read by
// `head_keys_tokens`. Only the 256 multiplying threads call this (named barrier 4).
__device__ __forceinline__ u64 argmax_key(float v, int i) {
    if (!(v > -INFINITY)) return 0ull;
    return ((u64)order_key(v == 0.f ? 0.f : v) << 32) | (u64)(~(u32)i);
}
// N: a warp's tiles of 16 table rows, v16 + 64 j for tile j (a warpgroup's 64-row parts).
template <class K, int N>
__device__ __forceinline__ void wg_finish(const typename K::Acc (&acc)[N], float* out, u64* keys, int vocab,
                                          int v16, int t0, int mt, const float* rs, const float* xs, int buf = 0) {
    if (!keys) {
#pragma unroll
        for (int j = 0; j < N; j++)
            K::each(acc[j], vocab, v16 + 64 * j, t0, mt, rs, xs,
                    [&](int, int tok, int v, float l) { out[(size_t)(t0 + tok) * vocab + v] = l; });
        return;
    }
    // Each warp's best of its 16 table rows per x row (lanes of one t hold the same x rows),
    // one slot per warp and x row, then each x row's best of the 8 warps' into the keys. Two
    // sets of slots (`buf`) for a persistent block's items in turn: a warp that goes on to the
    // next item's writes cannot meet a thread still reading this one's (it must first pass the
    // next item's barrier, which that thread reaches after its reads).
    __shared__ u64 red2[2][8][64];
    u64 (&red)[8][64] = red2[buf];
    int tid = threadIdx.x, lane = tid & 31;
    u64 best[16];
#pragma unroll
    for (int i = 0; i < 16; i++) best[i] = 0;
#pragma unroll
    for (int j = 0; j < N; j++)
        K::each(acc[j], vocab, v16 + 64 * j, t0, mt, rs, xs, [&](int slot, int, int v, float l) {
            u64 k = argmax_key(l, v);
            best[slot] = k > best[slot] ? k : best[slot];
        });
#pragma unroll
    for (int i = 0; i < 16; i++) {
        u64 k = best[i];
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
            u64 other = __shfl_xor_sync(FULL, k, o);
            k = other > k ? other : k;
        }
        if (lane < 4) red[tid >> 5][(i >> 1) * 8 + 2 * lane + (i & 1)] = k;
    }
    named_sync(4, 256);
    if (tid < mt) {
        u64 k = red[0][tid];
#pragma unroll
        for (int w = 1; w < 8; w++) k = red[w][tid] > k ? red[w][tid] : k;
        if (k) atomicMax(keys + t0 + tid, k);
    }
}
// One stage's products of the warpgroup heads (`st`: the stage's shared-memory address, its
// 2 N 64-row table parts, then x's planes; `wg`: this warpgroup's N parts, N wg .. N wg + N - 1),
// committed with one stage in flight: when this returns, the previous stage's products are done
// and its slot free.
template <class K, int N>
__device__ __forceinline__ void wg_stage_products(typename K::Acc (&acc)[N], u32 st, int wg) {
    using A = WgLayout<64>;
    using B = WgLayout<128>;
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int s = 0; s < WG_KC / 32; s++) {
        u32 xp = st + 2 * N * A::BYTES;
        u64 dhi = B::desc(xp, 0, s), dlo = B::desc(xp, 64, s);
#pragma unroll
        for (int j = 0; j < N; j++) K::step(acc[j], A::desc(st + (u32)(N * wg + j) * A::BYTES, 0, s), dhi, dlo);
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
}
template <class K, int WG_STAGES>
__device__ __forceinline__ void head_wg_body(const char* W, const float* rs, int vocab, int cols,
                                             const unsigned char* xq, int m, float* out, u64* keys) {
    using A = WgLayout<64>;
    using B = WgLayout<128>;
    constexpr u32 STAGE = 2 * A::BYTES + B::BYTES;
    extern __shared__ __align__(128) char wsm[];
    int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3;
    int v0 = blockIdx.x * 128, t0 = blockIdx.y * 64, mt = min(m - t0, 64);
    int blocks = (m + 63) / 64, row = cols * K::ELEM;  // bytes of a table row and of a plane row
    const unsigned char* xb = xq + (size_t)blockIdx.y * 128 * row;
    const float* xs = (const float*)(xq + (size_t)blocks * 128 * row);
    u32 base = ((u32)__cvta_generic_to_shared(wsm) + 1023) & ~1023u;
    int kts = row / WG_KC;
    if (wg == 2) {
        // Piece p = c + 128 i of a stage (c: this thread): row p / 8 (table row v0 + row; x's
        // plane row), 16-byte chunk p % 8.
        int c = tid - 256;
        auto table = [&](int kt) {
            if (kt < kts) {
                u32 st = base + (u32)(kt % WG_STAGES) * STAGE;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    int p = c + i * 128, r = p >> 3, kc = p & 7;
                    const char* src = W + (size_t)min(v0 + r, vocab - 1) * row + kt * WG_KC + kc * 16;
                    cp_async16_l2(st + (u32)(r >> 6) * A::BYTES + A::at(r & 63, kc), src);
                }
            }
        };
        auto planes = [&](int kt) {
            if (kt < kts) {
                u32 st = base + (u32)(kt % WG_STAGES) * STAGE + 2 * A::BYTES;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    int p = c + i * 128, r = p >> 3, kc = p & 7;
                    cp_async16_s(st + B::at(r, kc), xb + (size_t)r * row + kt * WG_KC + kc * 16);
                }
            }
            cp_async_commit();
        };
        // The table's first stages before the wait on the previous kernel (they do not depend
        // on it).
#pragma unroll
        for (int kt = 0; kt < WG_STAGES - 1; kt++) table(kt);
        PDL_ENTRY();
#pragma unroll
        for (int kt = 0; kt < WG_STAGES - 1; kt++) planes(kt);
        for (int kt = 0; kt < kts; kt++) {
            // Stage kt landed, on barrier 1 or 3 by its parity: this arrival cannot count
            // towards the generation of stage kt - 2, which the multipliers passed before saying
            // (barrier 2, waited for below in the previous iteration) that kt - 2 was multiplied.
            cp_async_wait<WG_STAGES - 2>();
            named_arrive(1 + 2 * (kt & 1), WG_THREADS);
            // Stage kt + WG_STAGES - 1 goes where kt - 1 was, once that is multiplied.
            if (kt > 0) named_sync(2, WG_THREADS);
            table(kt + WG_STAGES - 1);
            planes(kt + WG_STAGES - 1);
        }
        cp_async_wait<0>();
        return;
    }
    PDL_ENTRY();
    typename K::Acc acc[1] = {};
    for (int kt = 0; kt < kts; kt++) {
        named_sync(1 + 2 * (kt & 1), WG_THREADS);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        wg_stage_products<K, 1>(acc, base + (u32)(kt % WG_STAGES) * STAGE, wg);
        if (kt > 0) named_arrive(2, WG_THREADS);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    // D fragment: warp w of the warpgroup holds table rows 16 w .. 16 w + 15; element c of its
    // 8-column tile j is acc[.][4 j + c], as mma's.
    wg_finish<K, 1>(acc, out, keys, vocab, v0 + wg * 64 + warp * 16, t0, mt, rs, xs);
}
// Dynamic shared memory: STAGES stages of 32 KB and 1,024 bytes to align them (`wg_smem` in
// model/head.rs): four for the int8 table, six for the 16-bit ones (the fastest of four and six
// at 64 rows of 2B4T's head on an H200, BENCHMARKS.md session 40).
#define HEAD_WG_ENTRY(NAME, T, K, STAGES)                                                                      \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)                                                \
        NAME(const T* W, const float* rs, int vocab, int cols, const unsigned char* x, int m, float* out,        \
             u64* keys) {                                                                                        \
        head_wg_body<K, STAGES>((const char*)W, rs, vocab, cols, x, m, out, keys);                              \
    }
HEAD_WG_ENTRY(head_wg_i8, i8, WgI8, 4)
// The 16-bit tables (no row scales: rs null), x by `split_rows_f16p` / `split_rows_bf16p`.
HEAD_WG_ENTRY(head_wg_f16, u16, Wg16<false>, 6)
HEAD_WG_ENTRY(head_wg_bf16, u16, Wg16<true>, 6)

// The warpgroup heads with each stage as two bulk copies (`cp.async.bulk`, the SM's copy engine:
// no per-thread copies) of 16 KB, from operands stored in the stages' own order and swizzle
// (`wg_tile_swizzled`): the table (a copy made once) and x's planes (each step). Stage slots
// handed over by mbarriers: `full` (one arrival, the issuing lane's, and the copies' bytes
// counted by the hardware) and `empty` (the 256 multiplying threads, once their products of the
// slot are done). Block: the two multiplying warpgroups and one warp whose lane 0 issues the
// copies.
#define WGB_THREADS 288
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try(u32 bar, u32 parity) {
    u32 ok;
    asm volatile(
        "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    while (!mbar_try(bar, parity)) {
    }
}
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
// Persistent: block b takes work items b, b + gridDim.x, ... of the (table tile, x row block)
// items, x's row blocks fastest (so that the blocks reading one table tile run at about the same
// time and share it through L2), and the issuing lane copies the next item's stages while the
// multiplying warpgroups finish the last one's (no pipeline to fill again per item). TILES: the
// 128-row tiles of the table copy an item takes (each warpgroup one 64-row part of each for 1,
// a whole tile for 2), each stage of x's planes serving all of them: with 2, x's bytes through
// L2 per table byte are halved. A last item past the table's tiles copies its last tile again
// (its rows are past `vocab`, so nothing of them is kept).
template <class K, int WG_STAGES, int TILES>
__device__ __forceinline__ void head_wgb_body(const char* Wt, const float* rs, int vocab, int cols,
                                              const unsigned char* xt, int m, float* out, u64* keys) {
    using A = WgLayout<64>;
    using B = WgLayout<128>;
    constexpr u32 HALF = 2 * A::BYTES, STAGE = TILES * HALF + B::BYTES;
    extern __shared__ __align__(128) char wsm[];
    __shared__ __align__(8) unsigned long long bars[2 * WG_STAGES];  // full, then empty
    int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3;
    int blocks = (m + 63) / 64, row = cols * K::ELEM;
    int kts = row / WG_KC, tiles = (vocab + 127) / 128;
    int items = (tiles + TILES - 1) / TILES * blocks;
    int mine = (items - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
    const float* xs = (const float*)(xt + (size_t)blocks * 128 * row);
    u32 base = ((u32)__cvta_generic_to_shared(wsm) + 1023) & ~1023u;
    u32 full = (u32)__cvta_generic_to_shared(bars), empty = full + 8 * WG_STAGES;
    if (tid == 0) {
        for (int i = 0; i < WG_STAGES; i++) mbar_init(full + 8 * i, 1), mbar_init(empty + 8 * i, 256);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (wg == 2) {
        // With two tiles the multipliers' accumulators need more registers than a block of
        // three warpgroups gets each (168): the copying warpgroup gives its own back.
        if (TILES > 1) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid == 256) {
            // Stage g of this block: item g / kts's table tiles and x row block, column step g % kts.
            auto item = [&](int g) { return (int)blockIdx.x + g / kts * (int)gridDim.x; };
            auto table = [&](int g, int j) {
                int t = min(item(g) / blocks * TILES + j, tiles - 1);
                return Wt + ((size_t)t * kts + g % kts) * HALF;
            };
            auto planes = [&](int g) { return xt + ((size_t)(item(g) % blocks) * kts + g % kts) * B::BYTES; };
            auto tables = [&](int g, u32 st, u32 bar) {
#pragma unroll
                for (int j = 0; j < TILES; j++) bulk_copy(st + (u32)j * HALF, table(g, j), HALF, bar);
            };
            int total = mine * kts, first = min(WG_STAGES, total);
            // The table's first stages before the wait on the previous kernel (they do not
            // depend on it); x's after it.
            for (int g = 0; g < first; g++) {
                mbar_expect(full + 8 * g, STAGE);
                tables(g, base + (u32)g * STAGE, full + 8 * g);
            }
            PDL_WAIT();
            for (int g = 0; g < first; g++)
                bulk_copy(base + (u32)g * STAGE + TILES * HALF, planes(g), B::BYTES, full + 8 * g);
            for (int g = WG_STAGES; g < total; g++) {
                int slot = g % WG_STAGES;
                // The slot's previous stage (g - WG_STAGES, its use g / WG_STAGES - 1) multiplied.
                mbar_wait(empty + 8 * slot, (u32)(g / WG_STAGES - 1) & 1u);
                u32 st = base + (u32)slot * STAGE;
                mbar_expect(full + 8 * slot, STAGE);
                tables(g, st, full + 8 * slot);
                bulk_copy(st + TILES * HALF, planes(g), B::BYTES, full + 8 * slot);
            }
        }
        PDL_START();
        return;
    }
    if (TILES > 1) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    PDL_ENTRY();
    int g = 0;
    for (int i = 0; i < mine; i++) {
        int it = (int)blockIdx.x + i * (int)gridDim.x;
        int v0 = it / blocks * 128 * TILES, t0 = it % blocks * 64, mt = min(m - t0, 64);
        typename K::Acc acc[TILES] = {};
        // At least one stage (rows are a multiple of 128 bytes wide, on the host): a do-while,
        // so that no path skips the products (a join of zeroed and multiplied accumulators made
        // ptxas serialize every wgmma, C7514).
        int kt = 0;
        do {
            mbar_wait(full + 8 * (g % WG_STAGES), (u32)(g / WG_STAGES) & 1u);
            wg_stage_products<K, TILES>(acc, base + (u32)(g % WG_STAGES) * STAGE, wg);
            if (kt > 0) mbar_arrive(empty + 8 * ((g - 1) % WG_STAGES));
            g++;
        } while (++kt < kts);
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        // The item's last stage is free too: the copier goes on into the next item's.
        mbar_arrive(empty + 8 * ((g - 1) % WG_STAGES));
        wg_finish<K, TILES>(acc, out, keys, vocab, v0 + wg * 64 * TILES + warp * 16, t0, mt, rs, xs, i & 1);
    }
}
// Two tiles: the copier a whole warpgroup (for `setmaxnreg`), of which one lane issues.
#define WGB2_THREADS 384
// Dynamic shared memory: STAGES stages of TILES 16 KB table parts and 16 KB of x's planes, and
// 1,024 bytes to align them (`wg_smem` in model/head.rs).
#define HEAD_WGB_ENTRY(NAME, T, K, STAGES, TILES)                                                            \
    extern "C" __global__ void __launch_bounds__(TILES > 1 ? WGB2_THREADS : WGB_THREADS, 1)                    \
        NAME(const T* W, const float* rs, int vocab, int cols, const unsigned char* x, int m, float* out,        \
             u64* keys) {                                                                                        \
        head_wgb_body<K, STAGES, TILES>((const char*)W, rs, vocab, cols, x, m, out, keys);                      \
    }
HEAD_WGB_ENTRY(head_wgb_i8, i8, WgI8, 4, 1)
HEAD_WGB_ENTRY(head_wgb_f16, u16, Wg16<false>, 6, 1)
HEAD_WGB_ENTRY(head_wgb_bf16, u16, Wg16<true>, 6, 1)
HEAD_WGB_ENTRY(head_wgb2_i8, i8, WgI8, 4, 2)
HEAD_WGB_ENTRY(head_wgb2_f16, u16, Wg16<false>, 4, 2)
HEAD_WGB_ENTRY(head_wgb2_bf16, u16, Wg16<true>, 4, 2)
// `rows` rows of `row` bytes (row a multiple of 128) in the bulk head's stages' order
// (wg_tiled_at: 128-row tiles), rows up to the next multiple of 128 zero. A thread per 16 bytes,
// in the output's order.
extern "C" __global__ void wg_tile_swizzled(const unsigned char* src, int rows, int row, unsigned char* out) {
    PDL_ENTRY();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int kts = row / WG_KC;
    if (i >= (size_t)((rows + 127) / 128) * 128 * (row / 16)) return;
    size_t tile = i / (128 * 8);
    int p = (int)(i % (128 * 8)), r = p >> 3, kc = p & 7;
    int v = (int)(tile / kts) * 128 + r, c = (int)(tile % kts) * WG_KC + kc * 16;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (v < rows) val = *(const uint4*)(src + (size_t)v * row + c);
    *(uint4*)(out + wg_tiled_at(v, c, row)) = val;
}
// The warpgroup heads' split kernels, writing x's planes for the bulk head in its stages' order
// (`tiled`: what `wg_tile_swizzled` would make of them) or as they are, also zero the greedy keys
// of the head that follows (`keys`: null where it writes logits), after their wait on the
// previous kernel (the last reader of the keys, `head_keys_tokens`, precedes it).
__device__ __forceinline__ void zero_keys(u64* keys, int m) {
    if (keys && blockIdx.x == 0)
        for (int i = threadIdx.x; i < m; i += blockDim.x) keys[i] = 0;
}
extern "C" __global__ void split_rows_i16p(const float* x, int m, int mpad, int cols, unsigned char* out,
                                           u64* keys, int tiled) {
    split_rows_i16_body<true>(x, m, mpad, cols, out, tiled != 0);
    zero_keys(keys, m);
}
extern "C" __global__ void split_rows_f16p(const float* x, int m, int mpad, int cols, u16* out, u64* keys,
                                           int tiled) {
    split_rows_body<false, true>(x, m, mpad, cols, out, tiled != 0);
    zero_keys(keys, m);
}
extern "C" __global__ void split_rows_bf16p(const float* x, int m, int mpad, int cols, u16* out, u64* keys,
                                            int tiled) {
    split_rows_body<true, true>(x, m, mpad, cols, out, tiled != 0);
    zero_keys(keys, m);
}
// The greedy tokens of `m` rows from the warpgroup heads' keys (`wg_finish`): the lower 32 bits
// hold the index inverted; 0 where no logit was a number above -inf, as the argmax kernels.
extern "C" __global__ void head_keys_tokens(const u64* keys, int m, u32* out) {
    PDL_ENTRY();
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        u64 k = keys[i];
        out[i] = k ? ~(u32)k : 0u;
    }
}
#endif
// Every part holds a kernel.
extern "C" __global__ void part12_marker() {}
#endif
