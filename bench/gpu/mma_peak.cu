// The tensor cores' peak through mma.sync on this GPU, and the ternary products' inner loop
// alone (BENCHMARKS.md, session 28). Needs nvcc (the GPU machine has it; the project does not):
//
//   nvcc -O3 -arch=sm_90 -o /tmp/mma_peak bench/gpu/mma_peak.cu && /tmp/mma_peak
//
// Part 1: independent mma.sync (int8 m16n8k32 u8 x s8 and s8 x s8, f16 m16n8k16 with f32
// sums), ILP chains per warp, 4 or 8 warps per SM. Part 2: one warp's work per 128-column group
// of a register-blocked ternary product (4 strips x 4 token tiles: 16 weight fragments unpacked
// from their 2-bit codes, 64 mma), from registers only, with its 12 fragments read from shared
// memory, and with a block barrier per group as well; no global memory. Figures are mma per
// clock per SM at the SM clock the device reports.
#include <cstdio>
#include <cuda_runtime.h>
typedef unsigned u32;

template <int KIND>
__device__ __forceinline__ void mma(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if (KIND == 0)
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else if (KIND == 1)
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else {
        float* f = (float*)c;
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(f[0]), "+f"(f[1]), "+f"(f[2]), "+f"(f[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

template <int KIND, int ILP>
__global__ void independent(int iters, int* out, u32 seed) {
    int acc[ILP][4] = {};
    u32 a = seed ^ threadIdx.x, b = seed * 3 + threadIdx.x;
    for (int i = 0; i < iters; i++) {
#pragma unroll
        for (int j = 0; j < ILP; j++) mma<KIND>(acc[j], a, a + j, a ^ j, b, b + j, b ^ i);
    }
    int s = 0;
#pragma unroll
    for (int j = 0; j < ILP; j++) s += acc[j][0] + acc[j][1] + acc[j][2] + acc[j][3];
    if (s == 12345) out[0] = s;  // keeps the products
}

// MODE 0: registers only; 1: fragments from shared memory; 2: and a barrier per group.
template <int MODE>
__global__ void __launch_bounds__(128, 1) group_loop(int iters, int* out, u32 seed) {
    __shared__ uint4 sm[2][768];
    int lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < 2 * 768; i += 128) ((uint4*)sm)[i] = make_uint4(i * seed, i + seed, i ^ seed, i * 7);
    __syncthreads();
    int acc[4][4][4] = {};
    uint4 w[4], x[4][2];
    for (int s = 0; s < 4; s++) w[s] = make_uint4(seed + s, seed * s, seed ^ s, s);
    for (int n = 0; n < 4; n++) x[n][0] = x[n][1] = make_uint4(seed + n, n, seed, seed * n);
    for (int i = 0; i < iters; i++) {
        if (MODE >= 2) __syncthreads();
        if (MODE >= 1) {
            const uint4* b = sm[i & 1] + lane;
            for (int s = 0; s < 4; s++) w[s] = b[s * 32];
            for (int n = 0; n < 4; n++) x[n][0] = b[128 + n * 64], x[n][1] = b[128 + n * 64 + 32];
        } else {
            for (int s = 0; s < 4; s++) w[s].x ^= i, w[s].y += i;
            for (int n = 0; n < 4; n++) x[n][0].x ^= i, x[n][1].y += i;
        }
#pragma unroll
        for (int kb = 0; kb < 4; kb++) {
#pragma unroll
            for (int s = 0; s < 4; s++) {
                u32 wk = kb == 0 ? w[s].x : kb == 1 ? w[s].y : kb == 2 ? w[s].z : w[s].w;
                u32 a0 = wk & 0x03030303u, a1 = (wk >> 2) & 0x03030303u, a2 = (wk >> 4) & 0x03030303u,
                    a3 = (wk >> 6) & 0x03030303u;
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    const uint4& xv = x[n][kb >> 1];
                    mma<0>(acc[s][n], a0, a1, a2, a3, (kb & 1) ? xv.z : xv.x, (kb & 1) ? xv.w : xv.y);
                }
            }
        }
    }
    int s = 0;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) s += acc[a][b][0] + acc[a][b][1] + acc[a][b][2] + acc[a][b][3];
    if (s == 12345) out[0] = s;
}

static int sms, mhz;
static void report(const char* what, int warps_per_sm, float ms, double mmas, double macs_per_mma) {
    printf("%-34s warps/SM %2d: %7.3f ms, %.3f mma/clk/SM, %6.0f T multiply-adds/s\n", what, warps_per_sm, ms,
           mmas / sms / (ms * 1e-3 * mhz * 1e6), mmas * macs_per_mma / (ms * 1e-3) / 1e12);
}
template <typename F>
static float timed(F launch) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    launch();  // warm-up
    cudaEventRecord(e0);
    launch();
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (cudaGetLastError() != cudaSuccess) return -1;
    return ms;
}
template <int KIND, int ILP>
static void peak(const char* name, int warps, int* out) {
    const int iters = 4096;
    float ms = timed([&] { independent<KIND, ILP><<<sms, warps * 32>>>(iters, out, 1); });
    char what[64];
    snprintf(what, sizeof what, "%s, %d chains per warp", name, ILP);
    report(what, warps, ms, (double)sms * warps * iters * ILP, KIND == 2 ? 2048 : 4096);
}
template <int MODE>
static void loop(const char* name, int blocks_per_sm, int* out) {
    const int iters = 2000;
    float ms = timed([&] { group_loop<MODE><<<sms * blocks_per_sm, 128>>>(iters, out, 1); });
    report(name, 4 * blocks_per_sm, ms, (double)sms * blocks_per_sm * 4 * iters * 64, 4096);
}
int main() {
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    int khz;
    cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0);
    mhz = khz / 1000;
    printf("%s, %d SMs, %d MHz\n", p.name, sms, mhz);
    int* out;
    cudaMalloc(&out, 4);
    for (int w : {4, 8}) {
        peak<0, 16>("int8 m16n8k32 u8 x s8", w, out);
        peak<1, 16>("int8 m16n8k32 s8 x s8", w, out);
        peak<2, 16>("f16 m16n8k16, f32 sums", w, out);
    }
    peak<0, 4>("int8 m16n8k32 u8 x s8", 4, out);
    peak<0, 8>("int8 m16n8k32 u8 x s8", 4, out);
    for (int b : {1, 2}) {
        loop<0>("group loop, registers", b, out);
        loop<1>("group loop, fragments from smem", b, out);
        loop<2>("group loop, smem + barrier", b, out);
    }
    return 0;
}
