/* Single-core peak of the AVX2 int8 inner-product sequences (built and run by avx2_bench.py).
 *
 *   wd:   vpmaddwd + vpaddd on int16 operands          (exact; what the x86-avx2 family uses)
 *   ubsw: vpmaddubsw + vpmaddwd(1) + vpaddd on u8 x s8 (int16 saturation; ORT's AVX2 u8s8 sequence)
 *   fma:  vfmadd231ps ymm                              (the fp32 reference point)
 *
 * Eight (ten for FMA) independent accumulator chains, operands in registers: throughput, not latency.
 * Prints one line "name GMAC/s" per sequence; a MAC is one 8-bit (or fp32) multiply-add.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 100000000L
#define WD(c, x, y) c = _mm256_add_epi32(c, _mm256_madd_epi16(x, y))
#define UB(c, x, y) c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), one))

int main(void) {
    __m256i a = _mm256_set1_epi16(3), b = _mm256_set1_epi16(5), one = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    double t = now();
    for (long i = 0; i < N; i++) {
        __asm__ volatile("" : "+x"(a), "+x"(b));
        WD(c0, a, b); WD(c1, b, a); WD(c2, a, a); WD(c3, b, b); WD(c4, a, b); WD(c5, b, a); WD(c6, a, a); WD(c7, b, b);
    }
    double dt = now() - t;
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                 _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    printf("wd %.2f %d\n", N * 8 * 16 / dt / 1e9, _mm256_extract_epi32(s, 0));

    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = _mm256_setzero_si256();
    t = now();
    for (long i = 0; i < N; i++) {
        __asm__ volatile("" : "+x"(a), "+x"(b));
        UB(c0, a, b); UB(c1, b, a); UB(c2, a, a); UB(c3, b, b); UB(c4, a, b); UB(c5, b, a); UB(c6, a, a); UB(c7, b, b);
    }
    dt = now() - t;
    s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                         _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    printf("ubsw %.2f %d\n", N * 8 * 32 / dt / 1e9, _mm256_extract_epi32(s, 0));

    __m256 f = _mm256_set1_ps(1.0001f), g = _mm256_set1_ps(0.9999f);
    __m256 d0 = _mm256_setzero_ps(), d1 = d0, d2 = d0, d3 = d0, d4 = d0, d5 = d0, d6 = d0, d7 = d0, d8 = d0, d9 = d0;
    t = now();
    for (long i = 0; i < N; i++) {
        __asm__ volatile("" : "+x"(f), "+x"(g));
        d0 = _mm256_fmadd_ps(f, g, d0); d1 = _mm256_fmadd_ps(f, g, d1); d2 = _mm256_fmadd_ps(f, g, d2);
        d3 = _mm256_fmadd_ps(f, g, d3); d4 = _mm256_fmadd_ps(f, g, d4); d5 = _mm256_fmadd_ps(f, g, d5);
        d6 = _mm256_fmadd_ps(f, g, d6); d7 = _mm256_fmadd_ps(f, g, d7); d8 = _mm256_fmadd_ps(f, g, d8);
        d9 = _mm256_fmadd_ps(f, g, d9);
    }
    dt = now() - t;
    __m256 e = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(d0, d1), _mm256_add_ps(d2, d3)),
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(d4, d5), _mm256_add_ps(d6, d7)), _mm256_add_ps(d8, d9)));
    float o[8];
    _mm256_storeu_ps(o, e);
    printf("fma %.2f %d\n", N * 10 * 8 / dt / 1e9, (int)o[0]);
    return 0;
}
