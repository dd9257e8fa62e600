// `specdec convert DIR [--force]`: a checkpoint's PyTorch weights (pytorch_model.bin or its shards)
// to safetensors beside them, which the model runner memory-maps. No Python needed.
import * as path from 'path';
import { convertTorchWeights } from '../convert';

const USAGE = 'usage: specdec convert DIR [--force]   (pytorch_model.bin[.index.json] -> model.safetensors[.index.json] in DIR)';

export async function convertCommand(argv: string[]): Promise<number> {
  let dir: string | undefined;
  let force = false;
  for (const a of argv) {
    if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE + '\n');
      return 0;
    } else if (a === '--force') force = true;
    else if (a.startsWith('-') || dir !== undefined) {
      process.stderr.write(`specdec convert: unexpected argument '${a}' (${USAGE})\n`);
      return 2;
    } else dir = a;
  }
  if (dir === undefined) {
    process.stderr.write(`specdec convert: no directory given (${USAGE})\n`);
    return 2;
  }
  const t0 = Date.now();
  const r = convertTorchWeights(dir, {
    force,
    onFile: (file, n, bytes) => process.stderr.write(`specdec convert: wrote ${path.basename(file)} (${n} tensors, ${(bytes / 2 ** 20).toFixed(1)} MiB)\n`),
  });
  process.stderr.write(`specdec convert: ${r.tensors} tensors, ${(r.bytes / 2 ** 20).toFixed(1)} MiB in ${((Date.now() - t0) / 1000).toFixed(1)} s; ${dir} loads from safetensors now\n`);
  return 0;
}
