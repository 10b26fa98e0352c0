/* What the running CPU can execute, and what the including module was
   compiled for. */
#ifndef FASTBN_CPU_H
#define FASTBN_CPU_H

/* True when the CPU (and the OS, which must save the wider registers) can
   run the AVX2+FMA build. */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
static inline int fastbn_cpu_has_avx2_fma(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static inline int fastbn_cpu_has_avx2_fma(void) { return 0; } /* no runtime check here */
#endif

/* The instruction set of the including module's build: each kernel module
   (baseline and AVX2 builds of _bn, _moments, _ln) reports its own.  MSVC's
   /arch:AVX2 uses FMA but defines no __FMA__. */
#if defined(__AVX2__)
static const char fastbn_kernel_isa[] = "avx2";
#else
static const char fastbn_kernel_isa[] = "baseline";
#endif

#endif /* FASTBN_CPU_H */
