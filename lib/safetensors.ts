// Safetensors files: a TS writer (for tests, checkpoints and the trainer) and a reader backed by
// the native memory-mapped reader (cpp/model/safetensors.cc).
//
// Format: 8-byte little-endian header length N, N bytes of JSON
//   { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { k: v } }
// padded with spaces to a multiple of 8, then the data section (offsets relative to it).
import * as fs from 'fs';

import { native } from './native';
import { asTensor, type Device, type Tensor } from './tensor';

/// <reference path="../typings/layers.d.ts" />

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'BOOL';

export interface SafetensorsEntry {
  dtype: SafetensorsDType;
  shape: number[];
  /** F32: Float32Array. I32: Int32Array. F16/BF16: a Float32Array (converted, round to nearest
   *  even) or a Uint16Array of raw bits. I64: BigInt64Array. BOOL: Uint8Array of 0 / 1. */
  data: Float32Array | Int32Array | Uint16Array | BigInt64Array | Uint8Array;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** f32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN). */
export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f32 -> f16 bits, round to nearest even, with subnormals, overflow to inf and NaN. */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  const sign = (u >>> 16) & 0x8000;
  const ax = u & 0x7fffffff;
  if (ax >= 0x7f800000) return sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0);
  if (ax >= 0x477ff000) return sign | 0x7c00; // rounds up to inf
  if (ax < 0x38800000) {
    // f16 subnormal (or zero): q = mantissa * 2^(e-126), rounded to nearest even.
    if (ax < 0x33000000) return sign;
    const e = ax >>> 23;
    const m = (ax & 0x7fffff) | 0x800000;
    const s = 126 - e;
    let q = m >>> s;
    const rem = m & ((1 << s) - 1);
    const half = 1 << (s - 1);
    if (rem > half || (rem === half && (q & 1) !== 0)) q++;
    return sign | q;
  }
  const e = (ax >>> 23) - 112;
  const m = ax & 0x7fffff;
  let h = (e << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;
  return sign | h;
}

/** bf16 bits -> number. */
export function bf16BitsToF32(h: number): number {
  u32Scratch[0] = (h & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** f16 bits -> number. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

function numelOf(name: string, shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new Error(`safetensors: tensor '${name}': bad shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

/** The bytes of one entry's data (little-endian, as the format requires). */
function entryBytes(name: string, e: SafetensorsEntry): Buffer {
  const n = numelOf(name, e.shape);
  if (e.data.length !== n) {
    throw new Error(`safetensors: tensor '${name}': data has ${e.data.length} elements, shape [${e.shape.join(', ')}] needs ${n}`);
  }
  const buf = Buffer.alloc(n * (e.dtype === 'F16' || e.dtype === 'BF16' ? 2 : e.dtype === 'I64' ? 8 : e.dtype === 'BOOL' ? 1 : 4));
  switch (e.dtype) {
    case 'F32':
      if (!(e.data instanceof Float32Array)) throw new Error(`safetensors: tensor '${name}': F32 needs a Float32Array`);
      for (let i = 0; i < n; i++) buf.writeFloatLE(e.data[i]!, 4 * i);
      break;
    case 'I32':
      if (!(e.data instanceof Int32Array)) throw new Error(`safetensors: tensor '${name}': I32 needs an Int32Array`);
      for (let i = 0; i < n; i++) buf.writeInt32LE(e.data[i]!, 4 * i);
      break;
    case 'I64':
      if (!(e.data instanceof BigInt64Array)) throw new Error(`safetensors: tensor '${name}': I64 needs a BigInt64Array`);
      for (let i = 0; i < n; i++) buf.writeBigInt64LE(e.data[i]!, 8 * i);
      break;
    case 'BOOL':
      if (!(e.data instanceof Uint8Array) || e.data.some((b) => b > 1)) throw new Error(`safetensors: tensor '${name}': BOOL needs a Uint8Array of 0 / 1`);
      buf.set(e.data);
      break;
    case 'F16':
    case 'BF16': {
      const conv = e.dtype === 'F16' ? f32ToF16Bits : f32ToBf16Bits;
      if (e.data instanceof Uint16Array) {
        for (let i = 0; i < n; i++) buf.writeUInt16LE(e.data[i]!, 2 * i);
      } else if (e.data instanceof Float32Array) {
        for (let i = 0; i < n; i++) buf.writeUInt16LE(conv(e.data[i]!), 2 * i);
      } else {
        throw new Error(`safetensors: tensor '${name}': ${e.dtype} needs a Float32Array or a Uint16Array of bits`);
      }
      break;
    }
    default:
      throw new Error(`safetensors: tensor '${name}': unsupported dtype ${String((e as { dtype: unknown }).dtype)}`);
  }
  return buf;
}

/** Serialises tensors (in the object's key order) and optional string metadata. */
export function encodeSafetensors(tensors: Record<string, SafetensorsEntry>, metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`safetensors: metadata '${k}' must be a string`);
    }
    header['__metadata__'] = metadata;
  }
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, e] of Object.entries(tensors)) {
    if (name === '__metadata__') throw new Error("safetensors: '__metadata__' is not a valid tensor name");
    const bytes = entryBytes(name, e);
    header[name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length), 0);
  return Buffer.concat([len, json, ...chunks]);
}

/** Writes a .safetensors file (see encodeSafetensors). */
export function writeSafetensors(path: string, tensors: Record<string, SafetensorsEntry>, metadata?: Record<string, string>): void {
  fs.writeFileSync(path, encodeSafetensors(tensors, metadata));
}

// ---- Reader (native, memory-mapped) ---------------------------------------------------------

export interface SafetensorsTensorInfo {
  dtype: SpecdecNative.SafetensorsNativeDType | SpecdecNative.SafetensorsRawDType;
  shape: number[];
}

export interface SafetensorsReader {
  readonly path: string;
  /** The "__metadata__" strings of the header. */
  readonly metadata: Record<string, string>;
  /** Tensor names, sorted. */
  names(): string[];
  has(name: string): boolean;
  /** dtype and shape (E_FORMAT naming the file if there is no such tensor). */
  info(name: string): SafetensorsTensorInfo;
  /** A copy of the tensor on `device` (default cpu), dtype kept (E_UNSUPPORTED for raw-only dtypes: I64, BOOL, U8, F8 ...). */
  load(name: string, device?: Device): Tensor;
  /** The stored bytes of any tensor (little-endian), with its dtype and shape. */
  raw(name: string): { dtype: string; shape: number[]; bytes: Uint8Array };
  /** Unmaps the file (loaded tensors stay valid). */
  close(): void;
  [Symbol.dispose](): void;
}

/**
 * Opens and validates a .safetensors file (header, dtypes, shapes, offsets, overlaps).
 * Throws an Error with code E_IO (missing/unreadable, naming the path) or E_FORMAT (naming the
 * file and the tensor).
 */
export function openSafetensors(path: string): SafetensorsReader {
  const f = native().safetensorsOpen(path);
  const metadata = f.metadata();
  const names = f.names();
  const set = new Set(names);
  return {
    path,
    metadata,
    names: () => names.slice(),
    has: (name: string) => set.has(name),
    info: (name: string) => f.info(name),
    load: (name: string, device: Device = 'cpu') => asTensor(f.load(name, device)),
    raw: (name: string) => f.raw(name),
    close: () => f.close(),
    [Symbol.dispose]: () => f.close(),
  };
}
