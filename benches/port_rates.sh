#!/usr/bin/env bash
# Issue rates of the x86 instructions perch's kernels are built from, on this CPU: how many
# cycles eight independent f32 FMAs, eight `vpmaddwd` (the exact int8 product of the AVX2
# family), eight `vpmaddwd` each followed by its `vpaddd`, eight `vpmaddubsw` (onnxruntime's
# saturating u8s8 product) and eight `vpmovsxbw` loads take. Cycles assume the clock given
# as GHZ (default 3.2; `perf stat` cycles are not available in this VM), so read the ratios
# between lines rather than the absolute numbers.
#
#   bash benches/port_rates.sh [GHZ]
#
# Needs gcc and an x86-64 CPU with AVX2 and FMA.
set -euo pipefail
ghz=${1:-3.2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/rates.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
#define N 100000000L
#define RUN(name, body, clobbers...)                                  \
    do {                                                              \
        double t0 = now();                                            \
        for (long n = 0; n < N; n++) __asm__ volatile(body ::: clobbers); \
        printf("%-34s %.2f cycles\n", name, (now() - t0) / N * ghz * 1e9); \
    } while (0)
int main(int argc, char **argv) {
    double ghz = atof(argv[1]);
    static char buf[256];
    __asm__ volatile("vmovdqu %0, %%ymm14" :: "m"(*buf) : "xmm14");
    RUN("8 vfmadd231ps (independent)",
        "vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n vfmadd231ps %%ymm14,%%ymm15,%%ymm1\n"
        "vfmadd231ps %%ymm14,%%ymm15,%%ymm2\n vfmadd231ps %%ymm14,%%ymm15,%%ymm3\n"
        "vfmadd231ps %%ymm14,%%ymm15,%%ymm4\n vfmadd231ps %%ymm14,%%ymm15,%%ymm5\n"
        "vfmadd231ps %%ymm14,%%ymm15,%%ymm6\n vfmadd231ps %%ymm14,%%ymm15,%%ymm7\n",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    RUN("8 vpmaddwd",
        "vpmaddwd %%ymm14,%%ymm15,%%ymm0\n vpmaddwd %%ymm14,%%ymm15,%%ymm1\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm2\n vpmaddwd %%ymm14,%%ymm15,%%ymm3\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm4\n vpmaddwd %%ymm14,%%ymm15,%%ymm5\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm6\n vpmaddwd %%ymm14,%%ymm15,%%ymm7\n",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    RUN("8 vpmaddwd + vpaddd (accumulated)",
        "vpmaddwd %%ymm14,%%ymm15,%%ymm0\n vpaddd %%ymm0,%%ymm6,%%ymm6\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm1\n vpaddd %%ymm1,%%ymm7,%%ymm7\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm2\n vpaddd %%ymm2,%%ymm8,%%ymm8\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm3\n vpaddd %%ymm3,%%ymm9,%%ymm9\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm4\n vpaddd %%ymm4,%%ymm10,%%ymm10\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm5\n vpaddd %%ymm5,%%ymm11,%%ymm11\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm0\n vpaddd %%ymm0,%%ymm6,%%ymm6\n"
        "vpmaddwd %%ymm14,%%ymm15,%%ymm1\n vpaddd %%ymm1,%%ymm7,%%ymm7\n",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11");
    RUN("8 vpmaddubsw",
        "vpmaddubsw %%ymm14,%%ymm15,%%ymm0\n vpmaddubsw %%ymm14,%%ymm15,%%ymm1\n"
        "vpmaddubsw %%ymm14,%%ymm15,%%ymm2\n vpmaddubsw %%ymm14,%%ymm15,%%ymm3\n"
        "vpmaddubsw %%ymm14,%%ymm15,%%ymm4\n vpmaddubsw %%ymm14,%%ymm15,%%ymm5\n"
        "vpmaddubsw %%ymm14,%%ymm15,%%ymm6\n vpmaddubsw %%ymm14,%%ymm15,%%ymm7\n",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    RUN("8 vpmovzxbw ymm, xmm (cross-lane)",
        "vpmovzxbw %%xmm14,%%ymm0\n vpmovzxbw %%xmm14,%%ymm1\n"
        "vpmovzxbw %%xmm14,%%ymm2\n vpmovzxbw %%xmm14,%%ymm3\n"
        "vpmovzxbw %%xmm14,%%ymm4\n vpmovzxbw %%xmm14,%%ymm5\n"
        "vpmovzxbw %%xmm14,%%ymm6\n vpmovzxbw %%xmm14,%%ymm7\n",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    RUN("8 vpunpcklbw (in-lane)",
        "vpunpcklbw %%ymm14,%%ymm15,%%ymm0\n vpunpcklbw %%ymm14,%%ymm15,%%ymm1\n"
        "vpunpcklbw %%ymm14,%%ymm15,%%ymm2\n vpunpcklbw %%ymm14,%%ymm15,%%ymm3\n"
        "vpunpcklbw %%ymm14,%%ymm15,%%ymm4\n vpunpcklbw %%ymm14,%%ymm15,%%ymm5\n"
        "vpunpcklbw %%ymm14,%%ymm15,%%ymm6\n vpunpcklbw %%ymm14,%%ymm15,%%ymm7\n",
        "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    return 0;
}
EOF
gcc -O2 -mavx2 -mfma -o "$dir/rates" "$dir/rates.c"
grep -m1 'model name' /proc/cpuinfo || true
echo "(cycles at $ghz GHz)"
"$dir/rates" "$ghz"
