// Backend selection at run time: CUDA when compiled in and a device is usable, else the CPU
// backend, with the reason kept for `specdec info`.
import { loadedBinding } from './native';
import type { Device } from './tensor';

export interface BackendReport {
  readonly binary: string;
  readonly compiled: Device[];
  readonly available: Device[];
  readonly default: Device;
  /** Why CUDA is not used (undefined when it is). */
  readonly cudaReason?: string;
  readonly cudaRuntimeVersion?: string;
  readonly cudaDriverVersion?: string;
  readonly cudaArchs: readonly string[];
  readonly gpus: readonly SpecdecNative.GpuInfo[];
}

function cudaVersion(v: number): string | undefined {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : undefined;
}

export function backends(): BackendReport {
  const { binding, path } = loadedBinding();
  const b = binding.backendInfo();
  const forcedCpu = process.env['SPECDEC_BACKEND'] === 'cpu';
  const cudaOk = b.cudaAvailable && !forcedCpu;
  const reason = cudaOk ? undefined : forcedCpu && b.cudaAvailable ? 'SPECDEC_BACKEND=cpu' : b.cudaReason;
  const rt = cudaVersion(b.cudaRuntimeVersion);
  const drv = cudaVersion(b.cudaDriverVersion);
  return {
    binary: path,
    compiled: b.cudaCompiled ? ['cpu', 'cuda'] : ['cpu'],
    available: cudaOk ? ['cpu', 'cuda'] : ['cpu'],
    default: cudaOk ? 'cuda' : 'cpu',
    ...(reason !== undefined ? { cudaReason: reason } : {}),
    ...(rt !== undefined ? { cudaRuntimeVersion: rt } : {}),
    ...(drv !== undefined ? { cudaDriverVersion: drv } : {}),
    cudaArchs: b.cudaArchs,
    gpus: b.gpus,
  };
}

/** 'auto' -> the best available; an explicit 'cuda' that is unusable throws with the reason. */
export function resolveDevice(requested: Device | 'auto' = 'auto'): Device {
  const r = backends();
  if (requested === 'auto') return r.default;
  if (requested === 'cuda' && !r.available.includes('cuda')) {
    const e = new Error(`CUDA backend requested but not available: ${r.cudaReason ?? 'unknown reason'}`);
    (e as Error & { code: string }).code = 'E_NO_CUDA';
    throw e;
  }
  return requested;
}
