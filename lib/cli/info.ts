// `specdec info [--model DIR] [--json]`: version, binary loaded, backends compiled in, CUDA
// runtime/driver, GPUs, and why CUDA is not in use when it is not; with --model, what the loader
// will make of that checkpoint (exit 1 when part of it will not load).
import { backends } from '../backend';
import { formatCudaVersion, loadedBinding, native } from '../native';
import { formatModelReport, modelReport } from './info_model';

const USAGE = 'usage: specdec info [--model DIR] [--json]';

export async function infoCommand(argv: string[]): Promise<number> {
  let modelDir: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--model' && i + 1 < argv.length) modelDir = argv[++i];
    else if (a.startsWith('--model=')) modelDir = a.slice('--model='.length);
    else if (a !== '--json') {
      process.stderr.write(`specdec info: unknown option '${a}' (${USAGE})\n`);
      return 2;
    }
  }
  // What the loader will make of a checkpoint (config, weights, tokenizer), without loading weights.
  const model = modelDir !== undefined ? modelReport(modelDir) : undefined;
  const modelOk = !model || !Object.values(model).some((v) => typeof v === 'object' && v !== null && 'error' in v);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require('../../../package.json') as { version: string }).version;
  const r = backends();
  // Binaries tried before the one loaded (a CUDA prebuild the driver cannot run, say) and why.
  const tried = loadedBinding().attempts;
  // A CPU build does not start the CUDA runtime; it still asks libcuda what the driver supports.
  const probe = loadedBinding().binding.cudaDriverProbe?.();
  const driver = r.cudaDriverVersion ?? (probe && probe.version > 0 ? formatCudaVersion(probe.version) : undefined);
  // The CPU kernels' instruction set (SPECDEC_CPU_SIMD caps it); older addons lack cpuInfo.
  const binding = native();
  const cpu = typeof binding.cpuInfo === 'function' ? binding.cpuInfo() : null;
  const report = {
    version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    binary: r.binary,
    notLoaded: tried,
    backends: { compiled: r.compiled, available: r.available, default: r.default },
    cpu,
    cuda: {
      runtimeVersion: r.cudaRuntimeVersion ?? null,
      driverVersion: driver ?? null,
      driverProbe: probe?.reason ?? null,
      architectures: r.cudaArchs,
      gpus: r.gpus,
      notUsedBecause: r.cudaReason ?? null,
    },
  };
  if (argv.includes('--json')) {
    process.stdout.write(JSON.stringify(model ? { ...report, model } : report, null, 2) + '\n');
    return modelOk ? 0 : 1;
  }
  const lines = [
    `specdec ${version} (node ${process.version}, ${report.platform})`,
    `binary:            ${r.binary}`,
    `backends compiled: ${r.compiled.join(', ')}`,
    `backends usable:   ${r.available.join(', ')} (default: ${r.default})`,
    `CPU kernels:       ${cpu ? `${cpu.simd} (best here: ${cpu.best}), ${cpu.threads} threads` : 'unknown (older addon)'}`,
    `CPU bf16 matmul:   ${cpu?.amx ? `${cpu.matmul}${cpu.amx.reason ? ` (no AMX: ${cpu.amx.reason})` : ''}` : 'unknown (older addon)'}`,
    `CUDA runtime:      ${r.cudaRuntimeVersion ?? 'not compiled in'}`,
    `CUDA driver:       ${driver ?? `none found${probe?.reason ? ` (${probe.reason})` : ''}`}`,
    `CUDA archs:        ${r.cudaArchs.length ? r.cudaArchs.join(', ') : '-'}`,
    `GPUs:              ${r.gpus.length ? r.gpus.map((g) => `#${g.index} ${g.name} (sm ${g.computeCapability}, ${(g.totalMemory / 2 ** 30).toFixed(1)} GiB)`).join('; ') : 'none'}`,
  ];
  if (r.cudaReason) lines.push(`CUDA not in use:   ${r.cudaReason}`);
  // The local build is looked for first; its absence is only news in a source checkout.
  for (const a of tried.filter((t) => /prebuilds|SPECDEC_BINARY/.test(t.candidate))) lines.push(`not loaded:        ${a.candidate}: ${a.error}`);
  if (model) lines.push(...formatModelReport(model));
  process.stdout.write(lines.join('\n') + '\n');
  return modelOk ? 0 : 1;
}
