// `specdec` command line: dispatches subcommands. Contract: DESIGN §6.
// Errors print one line on stderr and exit non-zero; no stack traces for user errors.
import { infoCommand } from './info';

const USAGE = `usage: specdec <command> [options]

commands:
  generate   generate tokens (plain, or speculative with --draft/--medusa/--eagle/--lookahead/--prompt-lookup)
  info       backends, GPU, CUDA versions, and why a backend is not in use   [--model DIR] [--json]
  bench      run the benchmarks in bench/ (see README)
  train-medusa  train Medusa heads for a checkpoint (--model DIR --data FILE --heads N --out DIR)
  train-eagle   train an EAGLE head for a checkpoint (--model DIR --data FILE --out DIR)
  serve      OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /tokenize, /v1/models, /health, /metrics)
  convert    PyTorch weights (pytorch_model.bin) of a checkpoint to safetensors   DIR [--force]

run 'specdec <command> --help' for a command's options`;

type Command = (argv: string[]) => Promise<number>;

function lazy(modulePath: string, exportName: string): Command {
  return async (argv) => {
    // Loaded on demand so `specdec info` works even when a heavier module fails to load.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(modulePath) as Record<string, unknown>;
    const fn = mod[exportName];
    if (typeof fn !== 'function') throw new Error(`internal: ${modulePath} does not export ${exportName}`);
    return (fn as Command)(argv);
  };
}

const commands: Record<string, Command> = {
  info: infoCommand,
  generate: lazy('./generate', 'generateCommand'),
  bench: lazy('./bench', 'benchCommand'),
  'train-medusa': lazy('./train_medusa', 'trainMedusaCommand'),
  'train-eagle': lazy('./train_eagle', 'trainEagleCommand'),
  serve: lazy('./serve', 'serveCommand'),
  convert: lazy('./convert', 'convertCommand'),
};

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(USAGE + '\n');
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === '--version' || cmd === '-v') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    process.stdout.write((require('../../../package.json') as { version: string }).version + '\n');
    return 0;
  }
  const run = commands[cmd];
  if (!run) {
    process.stderr.write(`specdec: unknown command '${cmd}' (expected ${Object.keys(commands).join(', ')})\n`);
    return 2;
  }
  return run(rest);
}

/** One-line error message for the user; stack only with SPECDEC_DEBUG=1. */
export function reportError(e: unknown): void {
  const err = e as Error & { code?: string };
  const msg = (err && err.message ? err.message : String(e)).split('\n')[0];
  process.stderr.write(`specdec: ${msg}${err && err.code ? ` [${err.code}]` : ''}\n`);
  if (process.env['SPECDEC_DEBUG'] === '1' && err && err.stack) process.stderr.write(err.stack + '\n');
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      reportError(e);
      process.exitCode = 1;
    },
  );
}
