// `specdec bench [--list] [--only NAME[,NAME]] [--device cpu|cuda|auto] [--quick] [--json] [--out FILE]`:
// runs the benchmarks of bench/ in this process (they are compiled next to lib/, in dist/bench) and
// prints a summary table, or the whole report as JSON; --out writes the report to FILE ('default':
// bench/results/<device>-<date>.json). Exit 0 when every bench's own checks held (e.g. speculative
// output == plain output), 1 otherwise, 2 on bad flags.
import * as fs from 'fs';
import * as path from 'path';
import type { Device } from '../tensor';

export const BENCH_USAGE = `usage: specdec bench [--list] [--only NAME[,NAME]] [--device cpu|cuda|auto] [--quick] [--json] [--out FILE]

  --list        list the benchmarks and exit
  --only NAMES  run only these (comma-separated; see --list)
  --device D    cpu, cuda or auto (default auto: CUDA when 'specdec info' shows it usable)
  --quick       small shapes, few repetitions: a smoke run, not numbers to quote
  --json        print the whole report (machine header + results) as JSON instead of the table
  --out FILE    also write the JSON report to FILE ('default': bench/results/<device>-<date>.json)`;

export interface BenchFlags {
  readonly list: boolean;
  readonly only: string[] | undefined;
  readonly device: Device | 'auto';
  readonly quick: boolean;
  readonly json: boolean;
  readonly out: string | undefined;
  readonly help: boolean;
}

class FlagError extends Error {}

export function parseBenchFlags(argv: readonly string[]): BenchFlags {
  let list = false;
  let only: string[] | undefined;
  let device: Device | 'auto' = 'auto';
  let quick = false;
  let json = false;
  let out: string | undefined;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || v === '' || (eq < 0 && v.startsWith('--'))) throw new FlagError(`${name}: missing value`);
      return v;
    };
    switch (name) {
      case '--list':
        list = true;
        break;
      case '--quick':
        quick = true;
        break;
      case '--json':
        json = true;
        break;
      case '--help':
      case '-h':
        help = true;
        break;
      case '--only':
        only = value()
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s.length > 0);
        if (only.length === 0) throw new FlagError('--only: expected bench names');
        break;
      case '--device': {
        const d = value();
        if (d !== 'cpu' && d !== 'cuda' && d !== 'auto') throw new FlagError(`--device: expected cpu, cuda or auto, got '${d}'`);
        device = d;
        break;
      }
      case '--out':
        out = value();
        break;
      default:
        throw new FlagError(`unknown option '${a}'`);
    }
  }
  return { list, only, device, quick, json, out, help };
}

type RunModule = typeof import('../../bench/run');

/** bench/ is compiled next to lib/ (dist/bench); a package installed without it cannot bench. */
function loadRunner(): RunModule {
  const file = path.resolve(__dirname, '..', '..', 'bench', 'run.js');
  if (!fs.existsSync(file)) {
    throw Object.assign(new Error(`the benchmarks are not part of this installation (${file} not found): run 'npm run build:ts' in a source checkout`), { code: 'E_UNSUPPORTED' });
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file) as RunModule;
}

export async function benchCommand(argv: string[]): Promise<number> {
  let flags: BenchFlags;
  try {
    flags = parseBenchFlags(argv);
  } catch (e) {
    if (!(e instanceof FlagError)) throw e;
    process.stderr.write(`specdec bench: ${e.message} (see 'specdec bench --help')\n`);
    return 2;
  }
  if (flags.help) {
    process.stdout.write(BENCH_USAGE + '\n');
    return 0;
  }
  const runner = loadRunner();
  if (flags.list) {
    if (flags.json) process.stdout.write(JSON.stringify(runner.BENCHES.map((b) => ({ name: b.name, description: b.description })), null, 2) + '\n');
    else {
      const w = Math.max(...runner.BENCHES.map((b) => b.name.length));
      for (const b of runner.BENCHES) process.stdout.write(`${b.name.padEnd(w)}  ${b.description}\n`);
    }
    return 0;
  }
  runner.selectBenches(flags.only); // unknown names fail before any work
  const report = await runner.runBenches({ ...(flags.only ? { only: flags.only } : {}), device: flags.device, quick: flags.quick });
  if (flags.out !== undefined) {
    const file = flags.out === 'default' ? runner.defaultResultsFile(report) : path.resolve(flags.out);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
    process.stderr.write(`specdec bench: wrote ${file}\n`);
  }
  process.stdout.write(flags.json ? JSON.stringify(report, null, 2) + '\n' : runner.formatTable(report) + '\n');
  if (!report.ok) process.stderr.write('specdec bench: some checks failed (see CHECK FAILED rows)\n');
  return report.ok ? 0 : 1;
}
