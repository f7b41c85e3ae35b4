/*
 * simd.h - how the element-wise loops of the training step get wide vectors
 * in every build.
 *
 * Debian (buildtype plain, -O2) and meson's default build target baseline
 * x86-64, so `#pragma omp simd` loops (-fopenmp-simd) vectorise with 4-wide
 * SSE. MN_SIMD_CLONES also compiles an AVX2 copy that the loader picks on
 * CPUs that have it (GNU ifunc). Not "fma": a fused multiply-add rounds once
 * where the baseline rounds twice, and both copies must give the same bits,
 * so that which one the loader picks never changes a run's numbers.
 */
#ifndef MN_SIMD_H
#define MN_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(MN_NO_SIMD_CLONES)
#define MN_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MN_SIMD_CLONES
#endif

#endif
