// Converts a checkpoint directory's PyTorch weights (pytorch_model.bin, or shards listed in
// pytorch_model.bin.index.json) into safetensors beside them (model.safetensors, or shards and
// model.safetensors.index.json), so the model runner can memory-map them. One tensor in memory at a
// time; each file is written under a temporary name and renamed when complete.
import * as fs from 'fs';
import * as path from 'path';
import { codedError } from './errors';
import { readWeightMap } from './models/llama';
import { elementBytes, openTorchCheckpoint } from './torch_checkpoint';

export interface ConvertOptions {
  /** Replace safetensors files that exist. Default false (E_ARG naming them). */
  readonly force?: boolean;
  /** Called after each output file is written. */
  readonly onFile?: (file: string, tensors: number, bytes: number) => void;
}

export interface ConvertResult {
  /** The files written (paths), shards first, then the index when there is one. */
  readonly files: string[];
  readonly tensors: number;
  readonly bytes: number;
}

/** pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors; pytorch_model.bin -> model.safetensors. */
function outputName(shard: string): string {
  const base = shard.replace(/\.bin$/, '').replace(/^pytorch_model/, 'model');
  return `${base}.safetensors`;
}

/** Writes one safetensors file from a torch checkpoint, tensor by tensor; returns [tensors, bytes]. */
function convertFile(src: string, dst: string, names?: readonly string[]): [number, number] {
  const f = openTorchCheckpoint(src);
  const tmp = `${dst}.partial`;
  let fd: number | undefined;
  try {
    const chosen = (names ?? f.names()).slice().sort();
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    const sizes: number[] = [];
    let at = 0;
    for (const n of chosen) {
      const { dtype, shape } = f.info(n);
      const bytes = shape.reduce((a, d) => a * d, 1) * elementBytes(dtype);
      header[n] = { dtype, shape, data_offsets: [at, at + bytes] };
      sizes.push(bytes);
      at += bytes;
    }
    let h = Buffer.from(JSON.stringify(header), 'utf8');
    if (h.length % 8) h = Buffer.concat([h, Buffer.alloc(8 - (h.length % 8), 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    fd = fs.openSync(tmp, 'w');
    fs.writeSync(fd, len);
    fs.writeSync(fd, h);
    for (const [i, n] of chosen.entries()) {
      const b = f.raw(n).bytes;
      if (b.length !== sizes[i]) throw codedError('E_FORMAT', `${src}: tensor '${n}' read ${b.length} bytes, not its shape's`);
      for (let done = 0; done < b.length; ) done += fs.writeSync(fd, b, done, b.length - done);
    }
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, dst);
    return [chosen.length, at];
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    const err = e as NodeJS.ErrnoException;
    if (err.code && !err.code.startsWith('E_')) throw codedError('E_IO', `cannot write ${dst}: ${err.message}`);
    throw e;
  } finally {
    f.close();
  }
}

/**
 * Converts `dir`'s pytorch_model.bin (or its sharded index) to safetensors in `dir`. E_IO / E_FORMAT
 * naming the file; E_ARG when there is nothing to convert or safetensors exist (without `force`).
 */
export function convertTorchWeights(dir: string, opts: ConvertOptions = {}): ConvertResult {
  const single = path.join(dir, 'pytorch_model.bin');
  const index = path.join(dir, 'pytorch_model.bin.index.json');
  // Shard file -> the tensor names the index assigns to it (undefined: every tensor of the file).
  const shards = new Map<string, string[] | undefined>();
  let weightMap: Record<string, string> | undefined;
  if (fs.existsSync(index)) {
    weightMap = {};
    for (const [name, file] of Object.entries(readWeightMap(index))) {
      if (!file.endsWith('.bin') || /[\\/]/.test(file)) throw codedError('E_FORMAT', `${index}: weight_map['${name}'] is not a .bin file in the directory`);
      const list = shards.get(file) ?? [];
      list.push(name);
      shards.set(file, list);
      weightMap[name] = outputName(file);
    }
    if (shards.size === 0) throw codedError('E_FORMAT', `${index}: an empty weight_map`);
  } else if (fs.existsSync(single)) {
    shards.set('pytorch_model.bin', undefined);
  } else {
    throw codedError('E_ARG', `${dir}: no pytorch_model.bin or pytorch_model.bin.index.json to convert`);
  }
  const outputs = [...shards.keys()].map((s) => path.join(dir, outputName(s)));
  const outIndex = path.join(dir, 'model.safetensors.index.json');
  if (!opts.force) {
    const existing = [...outputs, ...(weightMap ? [outIndex] : [])].filter((p) => fs.existsSync(p));
    if (existing.length > 0) throw codedError('E_ARG', `${existing.map((p) => path.basename(p)).join(', ')} exist in ${dir} (force replaces them)`);
  }
  const files: string[] = [];
  let tensors = 0, bytes = 0;
  for (const [shard, names] of shards) {
    const dst = path.join(dir, outputName(shard));
    const [n, b] = convertFile(path.join(dir, shard), dst, names);
    files.push(dst);
    tensors += n;
    bytes += b;
    opts.onFile?.(dst, n, b);
  }
  if (weightMap) {
    fs.writeFileSync(outIndex, JSON.stringify({ metadata: { total_size: bytes }, weight_map: weightMap }, null, 2) + '\n');
    files.push(outIndex);
  }
  return { files, tensors, bytes };
}
