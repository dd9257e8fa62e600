// Reads PyTorch checkpoints (torch.save's zip format, torch >= 1.6: pytorch_model.bin, *.pt) holding a
// state dict of tensors, as published EAGLE and Medusa heads are, without Python. The pickle inside is
// read by a small restricted unpickler: it builds dicts, lists, tuples and tensors only, and refuses
// every other global (as torch.load(weights_only=True) does), so a checkpoint can never run code.
// Tensors are read from the archive's storage records on demand (views: offsets and strides applied).
// The result has the SafetensorsReader interface, so head loaders take either format.
import * as fs from 'fs';
import * as zlib from 'zlib';
import { codedError } from './errors';
import { join } from 'path';
import { openSafetensors, type SafetensorsReader, type SafetensorsTensorInfo } from './safetensors';
import { Tensor, type Device } from './tensor';

type DTypeName = SafetensorsTensorInfo['dtype'];

/** torch storage classes -> (dtype, bytes per element). */
const STORAGES: Record<string, [DTypeName, number]> = {
  FloatStorage: ['F32', 4], HalfStorage: ['F16', 2], BFloat16Storage: ['BF16', 2], DoubleStorage: ['F64', 8],
  LongStorage: ['I64', 8], IntStorage: ['I32', 4], ShortStorage: ['I16', 2], CharStorage: ['I8', 1],
  ByteStorage: ['U8', 1], BoolStorage: ['BOOL', 1],
};

// ---- zip (stored or deflated entries; zip64) --------------------------------------------------------

interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localOffset: number;
}

class ZipFile {
  readonly entries = new Map<string, ZipEntry>();
  private readonly fd: number;
  readonly fileSize: number;

  constructor(readonly path: string) {
    try {
      this.fd = fs.openSync(path, 'r');
    } catch (e) {
      throw codedError('E_IO', `cannot open ${path}: ${(e as Error).message}`);
    }
    try {
      this.fileSize = fs.fstatSync(this.fd).size;
      this.readDirectory();
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
  }

  private bad(what: string): Error {
    return codedError('E_FORMAT', `${this.path}: not a readable PyTorch zip checkpoint: ${what}`);
  }

  read(at: number, n: number): Buffer {
    if (!(at >= 0 && n >= 0 && at + n <= this.fileSize)) throw this.bad(`a record at byte ${at} (+${n}) lies past the end of the file (${this.fileSize} bytes)`);
    const b = Buffer.alloc(n);
    let done = 0;
    while (done < n) {
      const k = fs.readSync(this.fd, b, done, n - done, at + done);
      if (k <= 0) throw codedError('E_IO', `${this.path}: short read at byte ${at + done}`);
      done += k;
    }
    return b;
  }

  private readDirectory(): void {
    const tailLen = Math.min(this.fileSize, 22 + 65535);
    if (tailLen < 22) throw this.bad(`${this.fileSize} bytes is too short for a zip archive`);
    const tail = this.read(this.fileSize - tailLen, tailLen);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) if (tail.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
    if (eocd < 0) {
      // torch's pre-1.6 format is a sequence of pickles (it starts with a pickle's PROTO opcode).
      if (this.read(0, 1)[0] === 0x80) {
        throw codedError('E_UNSUPPORTED', `${this.path} is in PyTorch's legacy (pre-1.6) format, which is not read; re-save it once with a current torch: ` +
          `python -c "import torch; torch.save(torch.load('${this.path}', weights_only=True), '${this.path}')"`);
      }
      throw this.bad('no end-of-central-directory record (not a zip file)');
    }
    let count = tail.readUInt16LE(eocd + 10);
    let dirSize = tail.readUInt32LE(eocd + 12);
    let dirOffset = tail.readUInt32LE(eocd + 16);
    const locAt = eocd - 20;
    if (locAt >= 0 && tail.readUInt32LE(locAt) === 0x07064b50) {
      const z64At = Number(tail.readBigUInt64LE(locAt + 8));
      const z64 = this.read(z64At, 56);
      if (z64.readUInt32LE(0) !== 0x06064b50) throw this.bad('a zip64 locator without its record');
      count = Number(z64.readBigUInt64LE(32));
      dirSize = Number(z64.readBigUInt64LE(40));
      dirOffset = Number(z64.readBigUInt64LE(48));
    }
    const dir = this.read(dirOffset, dirSize);
    let p = 0;
    for (let k = 0; k < count; k++) {
      if (p + 46 > dir.length || dir.readUInt32LE(p) !== 0x02014b50) throw this.bad(`central directory entry ${k} is damaged`);
      const method = dir.readUInt16LE(p + 10);
      let compressedSize = dir.readUInt32LE(p + 20);
      let size = dir.readUInt32LE(p + 24);
      const nameLen = dir.readUInt16LE(p + 28), extraLen = dir.readUInt16LE(p + 30), commentLen = dir.readUInt16LE(p + 32);
      let localOffset = dir.readUInt32LE(p + 42);
      if (p + 46 + nameLen + extraLen + commentLen > dir.length) throw this.bad(`central directory entry ${k} runs past the directory`);
      const name = dir.toString('utf8', p + 46, p + 46 + nameLen);
      // zip64: the fields that read 0xffffffff follow in the 0x0001 extra record, in this order.
      let e = p + 46 + nameLen;
      const eEnd = e + extraLen;
      while (e + 4 <= eEnd) {
        const id = dir.readUInt16LE(e), len = dir.readUInt16LE(e + 2);
        if (id === 0x0001) {
          let q = e + 4;
          const next = (): number => {
            if (q + 8 > e + 4 + len) throw this.bad(`entry ${name}: a short zip64 record`);
            const v = Number(dir.readBigUInt64LE(q));
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next();
          if (compressedSize === 0xffffffff) compressedSize = next();
          if (localOffset === 0xffffffff) localOffset = next();
        }
        e += 4 + len;
      }
      this.entries.set(name, { name, method, compressedSize, size, localOffset });
      p += 46 + nameLen + extraLen + commentLen;
    }
  }

  /** Where an entry's bytes start in the file (stored entries are read in place). */
  private dataStart(e: ZipEntry): number {
    const h = this.read(e.localOffset, 30);
    if (h.readUInt32LE(0) !== 0x04034b50) throw this.bad(`entry ${e.name}: no local header at byte ${e.localOffset}`);
    return e.localOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
  }

  /** Bytes [from, from + n) of an entry's uncompressed content. */
  slice(e: ZipEntry, from: number, n: number): Buffer {
    if (!(from >= 0 && n >= 0 && from + n <= e.size)) throw this.bad(`entry ${e.name}: bytes ${from}..${from + n} of ${e.size}`);
    if (e.method === 0) {
      if (e.compressedSize !== e.size) throw this.bad(`entry ${e.name}: stored with ${e.compressedSize} bytes for ${e.size}`);
      return this.read(this.dataStart(e) + from, n);
    }
    if (e.method === 8) {
      let all: Buffer;
      try {
        all = zlib.inflateRawSync(this.read(this.dataStart(e), e.compressedSize), { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        throw this.bad(`entry ${e.name}: ${(err as Error).message}`);
      }
      if (all.length !== e.size) throw this.bad(`entry ${e.name}: inflated to ${all.length} bytes, the directory says ${e.size}`);
      return all.subarray(from, from + n);
    }
    throw this.bad(`entry ${e.name}: compression method ${e.method} (only stored and deflated entries are read)`);
  }

  close(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}

// ---- restricted unpickler ---------------------------------------------------------------------------

class Tuple {
  constructor(readonly items: unknown[]) {}
}
class Global {
  constructor(readonly module: string, readonly name: string) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}
class Storage {
  constructor(readonly dtype: DTypeName, readonly elementSize: number, readonly key: string, readonly numel: number) {}
}
/** A tensor as the pickle describes it: a view of a storage. */
class TensorRef {
  constructor(readonly storage: Storage, readonly offset: number, readonly shape: number[], readonly stride: number[]) {}
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  /** The storage index of the view's last element (its offset when empty). */
  get last(): number {
    return this.numel === 0 ? this.offset : this.offset + this.shape.reduce((a, d, i) => a + (d - 1) * (this.stride[i] as number), 0);
  }
}
const MARK = Symbol('mark');

const asInts = (v: unknown, what: string): number[] => {
  const items = v instanceof Tuple ? v.items : Array.isArray(v) ? v : undefined;
  if (!items || !items.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) throw new Error(`${what}: expected a tuple of non-negative integers`);
  return items as number[];
};

function rebuildTensor(args: unknown[]): TensorRef {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof Storage)) throw new Error('_rebuild_tensor: its first argument is not a storage');
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) throw new Error('_rebuild_tensor: bad storage offset');
  const shape = asInts(size, 'tensor size');
  const strides = asInts(stride, 'tensor stride');
  if (strides.length !== shape.length) throw new Error(`tensor size [${shape}] and stride [${strides}] differ in rank`);
  return new TensorRef(storage, offset, shape, strides);
}

/** What a REDUCE may call: data structures and torch's tensor rebuilders, nothing else. */
function callGlobal(g: Global, args: unknown[]): unknown {
  switch (g.full) {
    case 'collections.OrderedDict':
    case 'builtins.dict':
      return new Map();
    case 'torch._utils._rebuild_tensor':
    case 'torch._utils._rebuild_tensor_v2':
      return rebuildTensor(args);
    case 'torch._utils._rebuild_parameter':
    case 'torch._utils._rebuild_parameter_with_state':
      if (!(args[0] instanceof TensorRef)) throw new Error(`${g.full}: its data is not a tensor`);
      return args[0];
    case 'torch._tensor._rebuild_from_type_v2': {
      const [fn, , inner] = args;
      if (!(fn instanceof Global) || !(inner instanceof Tuple)) throw new Error(`${g.full}: unexpected arguments`);
      return callGlobal(fn, inner.items);
    }
    default:
      throw new Error(`the pickle calls ${g.full}, which is not read (only state dicts of tensors are)`);
  }
}

const ALLOWED_GLOBALS = new Set([
  'collections.OrderedDict', 'builtins.dict', 'torch._utils._rebuild_tensor', 'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter', 'torch._utils._rebuild_parameter_with_state', 'torch._tensor._rebuild_from_type_v2',
  'torch.Tensor', 'torch.nn.parameter.Parameter', ...Object.keys(STORAGES).map((s) => `torch.${s}`),
]);

/** Runs the pickle `data` (protocols 2-5, the opcodes torch.save emits plus the common ones). */
function unpickle(data: Buffer, storage: (dtype: DTypeName, elementSize: number, key: string, numel: number) => Storage): unknown {
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  let p = 0;
  const need = (n: number): void => {
    if (p + n > data.length) throw new Error(`truncated at byte ${p}`);
  };
  const u8 = (): number => (need(1), data[p++] as number);
  const u16 = (): number => (need(2), (p += 2), data.readUInt16LE(p - 2));
  const u32 = (): number => (need(4), (p += 4), data.readUInt32LE(p - 4));
  const text = (n: number): string => (need(n), (p += n), data.toString('utf8', p - n, p));
  const line = (): string => {
    const end = data.indexOf(0x0a, p);
    if (end < 0) throw new Error(`an unterminated line at byte ${p}`);
    const s = data.toString('utf8', p, end);
    p = end + 1;
    return s;
  };
  const pop = (): unknown => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= (marks[marks.length - 1] as number))) throw new Error(`stack underflow at byte ${p}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) throw new Error(`empty stack at byte ${p}`);
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const m = marks.pop();
    if (m === undefined) throw new Error(`no MARK before byte ${p}`);
    return stack.splice(m);
  };
  const setItems = (d: unknown, kv: unknown[]): void => {
    if (!(d instanceof Map)) throw new Error(`SETITEM on a non-dict at byte ${p}`);
    if (kv.length % 2 !== 0) throw new Error(`an odd number of dict items at byte ${p}`);
    for (let i = 0; i < kv.length; i += 2) d.set(kv[i], kv[i + 1]);
  };
  const global = (module: string, name: string): Global => {
    const g = new Global(module, name);
    if (!ALLOWED_GLOBALS.has(g.full)) throw new Error(`the pickle refers to ${g.full}, which is not read (only state dicts of tensors are)`);
    return g;
  };
  const longLE = (n: number): number => {
    need(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[p + i] as number);
    if (n > 0 && ((data[p + n - 1] as number) & 0x80)) v -= 1n << BigInt(8 * n);
    p += n;
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) throw new Error(`an integer ${v} outside the safe range`);
    return Number(v);
  };
  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: need(8); p += 8; break; // FRAME
      case 0x2e: // STOP
        if (stack.length !== 1) throw new Error(`STOP with ${stack.length} values on the stack`);
        return stack[0];
      case 0x28: marks.push(stack.length); break; // MARK
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x29: stack.push(new Tuple([])); break; // EMPTY_TUPLE
      case 0x74: stack.push(new Tuple(popMark())); break; // TUPLE
      case 0x85: stack.push(new Tuple([pop()])); break; // TUPLE1
      case 0x86: { const b = pop(), a = pop(); stack.push(new Tuple([a, b])); break; } // TUPLE2
      case 0x87: { const c = pop(), b = pop(), a = pop(); stack.push(new Tuple([a, b, c])); break; } // TUPLE3
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4a: need(4); stack.push(data.readInt32LE(p)); p += 4; break; // BININT
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x8a: stack.push(longLE(u8())); break; // LONG1
      case 0x8b: stack.push(longLE(u32())); break; // LONG4
      case 0x47: need(8); stack.push(data.readDoubleBE(p)); p += 8; break; // BINFLOAT
      case 0x58: stack.push(text(u32())); break; // BINUNICODE
      case 0x8c: stack.push(text(u8())); break; // SHORT_BINUNICODE
      case 0x8d: { need(8); const n = Number(data.readBigUInt64LE(p)); p += 8; stack.push(text(n)); break; } // BINUNICODE8
      case 0x54: stack.push(text(u32())); break; // BINSTRING (latin-1 in Python 2; names are ASCII)
      case 0x55: stack.push(text(u8())); break; // SHORT_BINSTRING
      case 0x43: { const n = u8(); need(n); stack.push(data.subarray(p, p + n)); p += n; break; } // SHORT_BINBYTES
      case 0x42: { const n = u32(); need(n); stack.push(data.subarray(p, p + n)); p += n; break; } // BINBYTES
      case 0x71: memo.set(u8(), top()); break; // BINPUT
      case 0x72: memo.set(u32(), top()); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x68: case 0x6a: { // BINGET, LONG_BINGET
        const k = op === 0x68 ? u8() : u32();
        if (!memo.has(k)) throw new Error(`memo ${k} read before it was written`);
        stack.push(memo.get(k));
        break;
      }
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: stack.push(top()); break; // DUP
      case 0x63: { const module = line(); stack.push(global(module, line())); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw new Error('STACK_GLOBAL without two strings');
        stack.push(global(module, name));
        break;
      }
      case 0x52: case 0x81: { // REDUCE, NEWOBJ
        const args = pop(), fn = pop();
        if (!(fn instanceof Global) || !(args instanceof Tuple)) throw new Error(`a call of a non-global at byte ${p}`);
        stack.push(callGlobal(fn, args.items));
        break;
      }
      case 0x62: pop(); if (!(top() instanceof Map || top() instanceof TensorRef)) throw new Error(`BUILD on an unexpected object at byte ${p}`); break; // BUILD: state ignored (_metadata)
      case 0x51: { // BINPERSID
        const pid = pop();
        const it = pid instanceof Tuple ? pid.items : undefined;
        if (!it || it[0] !== 'storage' || !(it[1] instanceof Global) || typeof it[2] !== 'string' || typeof it[4] !== 'number') throw new Error('a persistent id that is not a storage');
        const kind = STORAGES[it[1].name];
        if (it[1].module !== 'torch' || !kind) throw new Error(`storage type ${it[1].full} is not read`);
        if (!Number.isSafeInteger(it[4]) || it[4] < 0) throw new Error(`storage ${it[2]}: bad element count ${it[4]}`);
        stack.push(storage(kind[0], kind[1], it[2], it[4]));
        break;
      }
      case 0x73: { const v = pop(), k = pop(); setItems(top(), [k, v]); break; } // SETITEM
      case 0x75: { const kv = popMark(); setItems(top(), kv); break; } // SETITEMS
      case 0x61: { const v = pop(); const l = top(); if (!Array.isArray(l)) throw new Error('APPEND on a non-list'); l.push(v); break; } // APPEND
      case 0x65: { const vs = popMark(); const l = top(); if (!Array.isArray(l)) throw new Error('APPENDS on a non-list'); l.push(...vs); break; } // APPENDS
      default:
        throw new Error(`pickle opcode 0x${op.toString(16)} at byte ${p - 1} is not read`);
    }
  }
}

// ---- the reader -------------------------------------------------------------------------------------

/**
 * Opens a torch.save checkpoint (zip format) whose top-level object is a dict of tensors (a state
 * dict; entries that are not tensors are skipped). E_IO when unreadable, E_FORMAT naming the file and
 * the problem, E_UNSUPPORTED for the legacy pre-1.6 format (with the one line that converts it).
 */
export function openTorchCheckpoint(path: string): SafetensorsReader {
  const zip = new ZipFile(path);
  try {
    const pkls = [...zip.entries.keys()].filter((n) => n.endsWith('/data.pkl') || n === 'data.pkl');
    if (pkls.length !== 1) throw codedError('E_FORMAT', `${path}: expected one data.pkl in the archive, found ${pkls.length} (is this a torch.save file?)`);
    const pkl = pkls[0] as string;
    const prefix = pkl.slice(0, pkl.length - 'data.pkl'.length);
    const order = zip.entries.get(prefix + 'byteorder');
    if (order && zip.slice(order, 0, order.size).toString('utf8').trim() !== 'little') throw codedError('E_UNSUPPORTED', `${path}: a big-endian checkpoint is not read`);
    const storages = new Map<string, Storage>();
    let top: unknown;
    try {
      const e = zip.entries.get(pkl) as ZipEntry;
      top = unpickle(zip.slice(e, 0, e.size), (dtype, size, key, numel) => {
        const have = storages.get(key);
        if (have) {
          if (have.dtype !== dtype || have.numel !== numel) throw new Error(`storage ${key} is read as two different types`);
          return have;
        }
        const s = new Storage(dtype, size, key, numel);
        storages.set(key, s);
        return s;
      });
    } catch (err) {
      if ((err as { code?: string }).code) throw err;
      throw codedError('E_FORMAT', `${path}: ${(err as Error).message}`);
    }
    if (!(top instanceof Map)) throw codedError('E_FORMAT', `${path}: the checkpoint holds ${top === null ? 'None' : typeof top}, not a dict of tensors (a state dict)`);
    const tensors = new Map<string, TensorRef>();
    for (const [k, v] of top) if (typeof k === 'string' && v instanceof TensorRef) tensors.set(k, v);
    if (tensors.size === 0) throw codedError('E_FORMAT', `${path}: the checkpoint's dict holds no tensors`);
    // Every view inside its storage, every storage record as long as its elements.
    for (const [name, t] of tensors) {
      const s = t.storage;
      const rec = zip.entries.get(`${prefix}data/${s.key}`);
      if (!rec) throw codedError('E_FORMAT', `${path}: tensor '${name}': its storage record data/${s.key} is missing`);
      if (rec.size < s.numel * s.elementSize) throw codedError('E_FORMAT', `${path}: tensor '${name}': storage data/${s.key} holds ${rec.size} bytes, fewer than its ${s.numel} elements`);
      // A view repeats elements (stride 0) at most up to what one array can hold.
      if (t.numel * s.elementSize > 2 ** 32 - 1) throw codedError('E_FORMAT', `${path}: tensor '${name}' [${t.shape}] is larger than 4 GiB`);
      if (t.numel > 0 && t.last >= s.numel) throw codedError('E_FORMAT', `${path}: tensor '${name}' [${t.shape}] (offset ${t.offset}, strides [${t.stride}]) reads past its storage of ${s.numel} elements`);
    }
    const names = [...tensors.keys()].sort();
    const get = (name: string): TensorRef => {
      const t = tensors.get(name);
      if (!t) throw codedError('E_FORMAT', `${path} has no tensor '${name}'`);
      return t;
    };
    /** The tensor's elements in row-major order, little-endian. */
    const bytesOf = (t: TensorRef): Uint8Array => {
      const es = t.storage.elementSize;
      const numel = t.numel;
      const rec = zip.entries.get(`${prefix}data/${t.storage.key}`) as ZipEntry;
      if (numel === 0) return new Uint8Array(0);
      let contiguous = true;
      for (let i = t.shape.length - 1, want = 1; i >= 0; i--) {
        if ((t.shape[i] as number) !== 1 && t.stride[i] !== want) contiguous = false;
        want *= t.shape[i] as number;
      }
      if (contiguous) return zip.slice(rec, t.offset * es, numel * es);
      const src = zip.slice(rec, t.offset * es, (t.last - t.offset + 1) * es);
      const out = new Uint8Array(numel * es);
      const idx = new Array<number>(t.shape.length).fill(0);
      for (let k = 0; k < numel; k++) {
        let at = 0;
        for (let i = 0; i < idx.length; i++) at += (idx[i] as number) * (t.stride[i] as number);
        out.set(src.subarray(at * es, at * es + es), k * es);
        for (let i = idx.length - 1; i >= 0; i--) {
          if (++(idx[i] as number) < (t.shape[i] as number)) break;
          idx[i] = 0;
        }
      }
      return out;
    };
    let closed = false;
    const close = (): void => {
      if (!closed) zip.close();
      closed = true;
    };
    return {
      path,
      metadata: {},
      names: () => names.slice(),
      has: (name: string) => tensors.has(name),
      info: (name: string) => {
        const t = get(name);
        return { dtype: t.storage.dtype, shape: t.shape.slice() };
      },
      load: (name: string, device: Device = 'cpu') => {
        const t = get(name);
        const b = bytesOf(t);
        // The typed arrays need an aligned start: a buffer of its own (a fresh read) is used as is.
        const own = b.byteOffset === 0 && b.byteLength === b.buffer.byteLength;
        const buf = own ? b.buffer : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
        switch (t.storage.dtype) {
          case 'F32': return Tensor.fromArray(new Float32Array(buf), 'f32', t.shape, device);
          case 'F64': return Tensor.fromArray(new Float64Array(buf), 'f64', t.shape, device);
          case 'F16': return Tensor.fromArray(new Uint16Array(buf), 'f16', t.shape, device);
          case 'BF16': return Tensor.fromArray(new Uint16Array(buf), 'bf16', t.shape, device);
          case 'I32': return Tensor.fromArray(new Int32Array(buf), 'i32', t.shape, device);
          default: throw codedError('E_UNSUPPORTED', `${path}: tensor '${name}' is ${t.storage.dtype}, which loads only as raw bytes`);
        }
      },
      raw: (name: string) => {
        const t = get(name);
        return { dtype: t.storage.dtype, shape: t.shape.slice(), bytes: bytesOf(t) };
      },
      close,
      [Symbol.dispose]: close,
    };
  } catch (e) {
    zip.close();
    throw e;
  }
}

/** Bytes per element of a dtype the reader reports (all of them safetensors dtypes too). */
export function elementBytes(dtype: string): number {
  const kind = Object.values(STORAGES).find(([d]) => d === dtype);
  if (!kind) throw codedError('E_UNSUPPORTED', `dtype ${dtype} is not one torch checkpoints hold`);
  return kind[1];
}

/**
 * The first of `files` in `dir` that exists, opened as safetensors or (.bin, .pt) as a torch
 * checkpoint; E_IO naming what was tried when none does. `what` heads the message.
 */
export function openWeightsFile(dir: string, files: readonly string[], what: string): SafetensorsReader {
  const tried = files.map((n) => join(dir, n));
  const file = tried.find((p) => fs.existsSync(p));
  if (file === undefined) throw codedError('E_IO', `${what}: no weights in ${dir} (tried ${files.join(', ')})`);
  return file.endsWith('.safetensors') ? openSafetensors(file) : openTorchCheckpoint(file);
}
