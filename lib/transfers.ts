// Host <-> device traffic of the native layer, for asserting how a decoding step talks to the
// device. The counting points are shared by both backends (cpp/core/transfers.h): on the CPU
// backend they count exactly where the CUDA backend would copy or wait.
import { native } from './native';

export interface TransferStats {
  /** Waits of the host for the device: every read to the host, synchronous uploads, stream syncs. */
  readonly blockingWaits: number;
  /** Host-to-device copies (through the pinned staging ring on CUDA: no wait). */
  readonly uploads: number;
  readonly uploadBytes: number;
  /** Device-to-host copies (results, and any array read to JavaScript). */
  readonly readbacks: number;
  readonly readbackBytes: number;
  /** Calls from JavaScript into the addon. */
  readonly napiCalls: number;
  /**
   * Ops dispatched to a backend: on CUDA one kernel launch each (a split-KV attention adds its
   * merge kernel), on the CPU one parallel loop each. Counted where both backends dispatch, so a
   * CPU run shows the launches a CUDA step makes.
   */
  readonly deviceOps: number;
  /**
   * CUDA graphs launched: each replays a forward's layer stack as one launch (counted once in
   * `deviceOps`). Zero on the CPU and unless SPECDEC_CUDA_GRAPHS=1.
   */
  readonly graphLaunches: number;
  /** CUDA graphs captured (a new shape or attention plan seen for the second time). */
  readonly graphCaptures: number;
}

/** Process-wide totals since the addon loaded. */
export function transferCounters(): TransferStats {
  const c = native().transferCounters();
  if (c instanceof Float64Array) {
    return {
      uploads: c[0] as number, uploadBytes: c[1] as number, readbacks: c[2] as number, readbackBytes: c[3] as number,
      blockingWaits: c[4] as number, deviceOps: c[5] as number, napiCalls: c[6] as number,
      graphLaunches: c[7] ?? 0, graphCaptures: c[8] ?? 0,
    };
  }
  return { ...c, deviceOps: c.deviceOps ?? 0, graphLaunches: 0, graphCaptures: 0 };
}

/** What happened since `from` (a transferCounters() reading), not counting the reading calls. */
export function transfersSince(from: TransferStats): TransferStats {
  const now = transferCounters();
  return {
    blockingWaits: now.blockingWaits - from.blockingWaits,
    uploads: now.uploads - from.uploads,
    uploadBytes: now.uploadBytes - from.uploadBytes,
    readbacks: now.readbacks - from.readbacks,
    readbackBytes: now.readbackBytes - from.readbackBytes,
    napiCalls: now.napiCalls - from.napiCalls - 1,
    deviceOps: now.deviceOps - from.deviceOps,
    graphLaunches: now.graphLaunches - from.graphLaunches,
    graphCaptures: now.graphCaptures - from.graphCaptures,
  };
}

/** GPU time per kernel (see cudaKernelProfile). */
export interface KernelProfile {
  /** False unless timing is on (SPECDEC_CUDA_PROFILE=1 at start, or setCudaKernelProfiling(true)) on a usable GPU; `reason` says why. */
  readonly enabled: boolean;
  readonly reason?: string;
  /** Per kernel name, the most time first: launches and their summed GPU time in microseconds. */
  readonly rows: readonly { readonly name: string; readonly calls: number; readonly totalUs: number }[];
  /** From the first timed launch's start to the last one's end, and the kernels' time within it. */
  readonly spanUs: number;
  readonly busyUs: number;
  readonly launches: number;
  /** More launches than the profiler keeps (262144) since the last reset: later ones were not timed. */
  readonly truncated: boolean;
}

/**
 * Where a CUDA step's time goes: with SPECDEC_CUDA_PROFILE=1 in the environment at start (or after
 * setCudaKernelProfiling(true)), every eager kernel launch on the library stream is bracketed by
 * CUDA events (a graph replay counts as one "cuda graph: layer stack" launch). This waits for the stream, then sums the intervals per
 * kernel since the last reset; `spanUs - busyUs` is the time the GPU sat idle between kernels. A
 * diagnostic: the events cost host time per launch, so time tokens/s without it.
 */
export function cudaKernelProfile(options: { readonly reset?: boolean } = {}): KernelProfile {
  const b = native();
  if (typeof b.cudaProfile !== 'function') {
    return { enabled: false, reason: 'this binary predates cudaProfile', rows: [], spanUs: 0, busyUs: 0, launches: 0, truncated: false };
  }
  const r = b.cudaProfile(options.reset === true);
  return { ...r, ...(r.reason !== undefined ? { reason: r.reason } : {}) };
}

/**
 * Switches the kernel timing of cudaKernelProfile on or off for later launches and returns the
 * previous state; false (and no effect) without a usable GPU or in a binary that predates it. The
 * kernel benches time one extra pass of each case this way, so their wall-clock passes run untimed.
 */
export function setCudaKernelProfiling(on: boolean): boolean {
  const b = native();
  return typeof b.cudaProfileEnable === 'function' ? b.cudaProfileEnable(on) : false;
}
