// Native binding of what the CPU backend runs on (cpp/napi/cpu_napi.cc).
// Augments SpecdecNative.NativeBinding (typings/native.d.ts) by interface merging.

declare namespace SpecdecNative {
  type CpuSimd = 'portable' | 'avx2' | 'avx512';

  interface CpuInfo {
    /** The instruction set the CPU kernels use (the best the CPU has, capped by SPECDEC_CPU_SIMD). */
    simd: CpuSimd;
    /** The best instruction set this CPU has kernels for. */
    best: CpuSimd;
    /** Threads of the CPU backend's pool (SPECDEC_CPU_THREADS or the hardware's). */
    threads: number;
    /** Whether the pool has lent a core (cpuLendFlag) and runs other threads' parallel work on one thread fewer. */
    coreLent: boolean;
    /** Parallel jobs handed to the pool's workers since it started. */
    poolJobs: number;
    /** Parallel jobs run on their caller instead: smaller than a wakeup is worth while every worker slept. */
    poolSmallInline: number;
  }

  interface NativeBinding {
    /** E_ARG when SPECDEC_CPU_SIMD holds an unknown value. */
    cpuInfo(): CpuInfo;
    /** Measured peak f32 FMA rate of `simd` over the pool's threads (registers only, ~`seconds`). */
    cpuPeakGflops(simd: CpuSimd, seconds: number): number;
    /**
     * The pool's lend word, a count (Atomics.add / Atomics.sub): while it is nonzero one core is
     * lent to the calling thread's other work, so parallel work other threads start uses one
     * thread fewer.
     */
    cpuLendFlag(): Int32Array;
  }
}
