// Native binding of what the CPU backend runs on (cpp/napi/cpu_napi.cc).
// Augments SpecdecNative.NativeBinding (typings/native.d.ts) by interface merging.

declare namespace SpecdecNative {
  type CpuSimd = 'portable' | 'avx2' | 'avx512';

  interface CpuInfo {
    /** The instruction set the CPU kernels use (the best the CPU has, capped by SPECDEC_CPU_SIMD). */
    simd: CpuSimd;
    /** The best instruction set this CPU has kernels for. */
    best: CpuSimd;
    /**
     * What the matmul of bf16 weights runs on: 'amx' (AMX-BF16 tiles), 'amx-emulated' (their order
     * in C++, SPECDEC_CPU_AMX=emulate: slow, for tests) or the vector path (`simd`).
     */
    matmul: CpuSimd | 'amx' | 'amx-emulated';
    /** The AMX-BF16 matmul's state, decided at first use (cpp/cpu/matmul_amx.h). */
    amx: CpuAmx;
    /** Threads of the CPU backend's pool (SPECDEC_CPU_THREADS or the hardware's). */
    threads: number;
    /** Whether the pool has lent a core (cpuLendFlag) and runs other threads' parallel work on one thread fewer. */
    coreLent: boolean;
    /** Parallel jobs handed to the pool's workers since it started. */
    poolJobs: number;
    /** Parallel jobs run on their caller instead: smaller than a wakeup is worth while every worker slept. */
    poolSmallInline: number;
  }

  interface CpuAmx {
    mode: 'off' | 'hardware' | 'emulated';
    /** Why the hardware tiles are not used ('' when they are, or when emulated on request). */
    reason: string;
    /** Whether the hardware self-test ran (the CPU and the OS allowed the tiles). */
    selfTested: boolean;
    /** Its worst output error in units of the order's error bound (< 1 passes). */
    selfTestError: number;
    /** Whether the hardware gave the emulated engine's bits (the SDM's rounding) in the self-test. */
    matchesEmulation: boolean;
  }

  interface NativeBinding {
    /** E_ARG when SPECDEC_CPU_SIMD or SPECDEC_CPU_AMX holds an unknown value. */
    cpuInfo(): CpuInfo;
    /**
     * Measured peak f32 FMA rate of `simd` over the pool's threads (registers only, ~`seconds`);
     * 'amx': the TDPBF16PS rate in bf16 products (E_UNSUPPORTED unless the hardware tiles are in use).
     */
    cpuPeakGflops(simd: CpuSimd | 'amx', seconds: number): number;
    /**
     * The pool's lend word, a count (Atomics.add / Atomics.sub): while it is nonzero one core is
     * lent to the calling thread's other work, so parallel work other threads start uses one
     * thread fewer.
     */
    cpuLendFlag(): Int32Array;
  }
}
