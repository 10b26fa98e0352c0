/* What the running CPU can execute, and what the including module was
   compiled for. */
#ifndef FASTBN_CPU_H
#define FASTBN_CPU_H

/* True when the CPU (and the OS, which must save the wider registers) can
   run the AVX2+FMA build. */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>

static inline int fastbn_cpu_has_avx2_fma(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* ... and the AVX-512 build (F, BW, VL and DQ, with AVX2 and FMA) */
static inline int fastbn_cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return fastbn_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
}

/* The CPU family of an AMD processor (base plus extended family, as CPUID
   leaf 1 gives them: 25 for Zen 3 and Zen 4, 26 for Zen 5), 0 for any other
   vendor. */
static inline int fastbn_cpu_amd_family(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return 0;
    /* "AuthenticAMD" in EBX, EDX, ECX */
    if (b != 0x68747541u || d != 0x69746e65u || c != 0x444d4163u)
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    unsigned int family = (a >> 8) & 0xfu;
    if (family == 0xfu)
        family += (a >> 20) & 0xffu;
    return (int)family;
}
#else
static inline int fastbn_cpu_has_avx2_fma(void) { return 0; } /* no runtime check here */
static inline int fastbn_cpu_has_avx512(void) { return 0; }
static inline int fastbn_cpu_amd_family(void) { return 0; }
#endif

/* The instruction set of the including module's build: each kernel module
   (baseline, AVX2 and AVX-512 builds of _bn, _moments, _ln) reports its own.  MSVC's
   /arch:AVX2 uses FMA but defines no __FMA__. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
static const char fastbn_kernel_isa[] = "avx512";
#elif defined(__AVX2__)
static const char fastbn_kernel_isa[] = "avx2";
#else
static const char fastbn_kernel_isa[] = "baseline";
#endif

#endif /* FASTBN_CPU_H */
