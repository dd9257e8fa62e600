// The native binding as JS sees it: the one place where JS meets C++.
// Each area of the addon augments `NativeBinding` in its own file (interface merging):
// typings/kv.d.ts, typings/sampling.d.ts, typings/model.d.ts.

declare namespace SpecdecNative {
  type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32' | 'u64' | 'f64';
  type Device = 'cpu' | 'cuda';
  type HostArray = Float32Array | Float64Array | Int32Array | Uint32Array | Uint16Array | BigUint64Array;

  /** A native tensor: dtype, shape, device, owned buffer. Free it with dispose() (GC is only a fallback). */
  interface Tensor {
    readonly dtype: DType;
    readonly shape: number[];
    readonly device: Device;
    readonly numel: number;
    readonly disposed: boolean;
    /** Copies to a JS array: Float32Array for f32/f16/bf16, Float64Array, Int32Array, Uint32Array, BigUint64Array. */
    toArray(): Float32Array | Float64Array | Int32Array | Uint32Array | BigUint64Array;
    /** f32/f16/bf16 -> Float32Array (E_ARG for other dtypes). */
    toFloat32(): Float32Array;
    /** i32 -> Int32Array (E_ARG for other dtypes). */
    toInt32(): Int32Array;
    to(device: Device): Tensor;
    view(shape: readonly number[]): Tensor;
    rows(begin: number, end: number): Tensor;
    dispose(): void;
    /** Same as dispose(), for `using`. Installed by lib/tensor.ts. */
    [Symbol.dispose](): void;
    toString(): string;
  }

  interface TensorStatic {
    empty(dtype: DType, shape: readonly number[], device?: Device): Tensor;
    zeros(dtype: DType, shape: readonly number[], device?: Device): Tensor;
    /** Uint16Array data is taken as raw bits for f16/bf16; BigUint64Array only for u64. */
    fromArray(data: HostArray | readonly number[], dtype: DType, shape?: readonly number[], device?: Device): Tensor;
    gatherRows(tensors: readonly Tensor[], rows: Int32Array | readonly number[], width?: number, device?: Device): Tensor;
  }

  interface GpuInfo {
    index: number;
    name: string;
    computeCapability: string;
    totalMemory: number;
  }

  interface BackendInfo {
    cudaCompiled: boolean;
    cudaAvailable: boolean;
    cudaReason: string;
    cudaRuntimeVersion: number;
    cudaDriverVersion: number;
    cudaArchs: string[];
    gpus: GpuInfo[];
  }

  /** Process-wide counts since the addon loaded (cpp/core/transfers.h); napiCalls includes this call. */
  interface TransferCounters {
    uploads: number;
    uploadBytes: number;
    readbacks: number;
    readbackBytes: number;
    blockingWaits: number;
    napiCalls: number;
    /** Ops dispatched to a backend (a kernel launch each on CUDA); absent from older binaries. */
    deviceOps?: number;
  }

  interface NativeBinding {
    readonly abiVersion: number;
    readonly Tensor: TensorStatic;
    backendInfo(): BackendInfo;
    /**
     * Float64Array [uploads, uploadBytes, readbacks, readbackBytes, blockingWaits, deviceOps,
     * napiCalls, graphLaunches, graphCaptures] (older binaries: the first 7, or a TransferCounters object).
     */
    transferCounters(): TransferCounters | Float64Array;
    /** Kernel timing since the last reset (SPECDEC_CUDA_PROFILE=1; cuda/profile.cu). Absent in older builds. */
    cudaProfile?(reset: boolean): CudaProfile;
    /** Switches kernel timing for later launches; returns the previous state (false without CUDA). Absent in older builds. */
    cudaProfileEnable?(on: boolean): boolean;
    /** The CUDA version the installed driver supports (cuDriverGetVersion through a dlopen of
     *  libcuda; 0 and a reason without a driver). Absent in builds older than 0.2. */
    cudaDriverProbe?(): { version: number; reason?: string };
  }
  interface CudaProfile {
    enabled: boolean;
    reason?: string;
    rows: { name: string; calls: number; totalUs: number }[];
    spanUs: number;
    busyUs: number;
    launches: number;
    truncated: boolean;
  }
}
