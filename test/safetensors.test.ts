// Safetensors: TS writer -> native reader round trips for every dtype, and hostile files that
// must fail with E_FORMAT / E_IO naming the file and the tensor (never a crash).
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  bf16BitsToF32,
  encodeSafetensors,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  openSafetensors,
  writeSafetensors,
} from '../lib/safetensors';
import { Tensor } from '../lib/tensor';
import { assertThrowsCode, describeCuda, randomArray, rng, testSeed } from './helpers';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-st-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
function tmp(name = 'x'): string {
  return path.join(dir, `${name}-${fileNo++}.safetensors`);
}

/** A file made of an explicit header string (padded to 8) and data bytes; lenOverride replaces N. */
function rawFile(header: string, data: Buffer = Buffer.alloc(0), lenOverride?: bigint): string {
  let h = Buffer.from(header, 'utf8');
  if (h.length % 8) h = Buffer.concat([h, Buffer.alloc(8 - (h.length % 8), 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
  const p = tmp('raw');
  fs.writeFileSync(p, Buffer.concat([len, h, data]));
  return p;
}

const esc = (p: string): string => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe(`safetensors (seed ${testSeed})`, () => {
  const rand = rng(testSeed);

  it('TS f16/bf16 conversion agrees with the native one (round to nearest even, subnormals)', () => {
    const x = new Float32Array(4000);
    for (let i = 0; i < x.length; i++) {
      // magnitudes from f16 subnormals to beyond the f16 range, both signs
      x[i] = (rand() < 0.5 ? -1 : 1) * Math.pow(2, -26 + 44 * rand());
    }
    x[0] = 1 + 2 ** -11; // a tie
    x[1] = 65520; // rounds to inf in f16
    const h = Tensor.fromArray(x, 'f16').toFloat32();
    const b = Tensor.fromArray(x, 'bf16').toFloat32();
    for (let i = 0; i < x.length; i++) {
      assert.strictEqual(f16BitsToF32(f32ToF16Bits(x[i]!)), h[i], `f16 of ${x[i]}`);
      assert.strictEqual(bf16BitsToF32(f32ToBf16Bits(x[i]!)), b[i], `bf16 of ${x[i]}`);
    }
  });

  it('round-trips every dtype, shape and the metadata through writer and native reader', () => {
    const f32 = randomArray(6 * 5, rand, -3, 3);
    const half = randomArray(7, rand, -100, 100);
    const bits = Uint16Array.from({ length: 9 }, () => Math.floor(rand() * 0x7c00)); // finite f16/bf16 bit patterns
    const i32 = Int32Array.from({ length: 4 }, () => Math.floor((rand() - 0.5) * 2 ** 32));
    const p = tmp('rt');
    writeSafetensors(
      p,
      {
        'model.w': { dtype: 'F32', shape: [6, 5], data: f32 },
        'h.f16': { dtype: 'F16', shape: [7], data: half },
        'h.bf16': { dtype: 'BF16', shape: [7, 1], data: half },
        'raw.f16': { dtype: 'F16', shape: [3, 3], data: bits },
        'raw.bf16': { dtype: 'BF16', shape: [9], data: bits },
        ids: { dtype: 'I32', shape: [2, 2], data: i32 },
        scalar: { dtype: 'F32', shape: [], data: Float32Array.from([42.5]) },
        empty: { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
      },
      { format: 'pt', note: 'quote " and \\ and \u00e9' },
    );
    const f = openSafetensors(p);
    assert.deepStrictEqual(f.names(), ['empty', 'h.bf16', 'h.f16', 'ids', 'model.w', 'raw.bf16', 'raw.f16', 'scalar']);
    assert.deepStrictEqual(f.metadata, { format: 'pt', note: 'quote " and \\ and \u00e9' });
    assert.deepStrictEqual(f.info('model.w'), { dtype: 'F32', shape: [6, 5] });
    assert.deepStrictEqual(f.info('h.bf16'), { dtype: 'BF16', shape: [7, 1] });
    assert.deepStrictEqual(f.info('scalar'), { dtype: 'F32', shape: [] });
    const w = f.load('model.w');
    assert.strictEqual(w.dtype, 'f32');
    assert.deepStrictEqual(w.shape, [6, 5]);
    assert.deepStrictEqual(w.toFloat32(), f32);
    assert.deepStrictEqual(f.load('h.f16').toFloat32(), Float32Array.from(half, (v) => f16BitsToF32(f32ToF16Bits(v))));
    assert.deepStrictEqual(f.load('h.bf16').toFloat32(), Float32Array.from(half, (v) => bf16BitsToF32(f32ToBf16Bits(v))));
    assert.deepStrictEqual(f.load('raw.f16').toFloat32(), Float32Array.from(bits, f16BitsToF32));
    assert.deepStrictEqual(f.load('raw.bf16').toFloat32(), Float32Array.from(bits, bf16BitsToF32));
    const ids = f.load('ids');
    assert.strictEqual(ids.dtype, 'i32');
    assert.deepStrictEqual(ids.toInt32(), i32);
    assert.deepStrictEqual(Array.from(f.load('scalar').toFloat32()), [42.5]);
    assert.deepStrictEqual(f.load('empty').shape, [0, 3]);
    assertThrowsCode(() => f.load('nope'), 'E_FORMAT', new RegExp(`${esc(p)}.*no tensor named 'nope'`));
    f.close();
    assert.deepStrictEqual(w.toFloat32(), f32, 'loaded tensors outlive close()');
    assertThrowsCode(() => f.load('model.w'), 'E_DISPOSED', /closed/);
  });

  it('keeps tensors of other valid dtypes (I64, BOOL) as raw bytes: listed, readable with raw(), load() names the dtype', () => {
    const data = Buffer.alloc(24);
    data.writeBigInt64LE(-3n, 0);
    data.writeBigInt64LE(1234567890123n, 8);
    data.writeFloatLE(1.5, 16);
    data.writeUInt8(1, 20);
    data.writeUInt8(0, 21);
    const p = rawFile('{"d2t":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},"t2d":{"dtype":"BOOL","shape":[2],"data_offsets":[20,22]}}', data);
    const f = openSafetensors(p);
    try {
      assert.deepStrictEqual(f.names(), ['d2t', 't2d', 'w']);
      assert.ok(f.has('d2t'));
      assert.deepStrictEqual(f.info('d2t'), { dtype: 'I64', shape: [2] });
      const r = f.raw('d2t');
      assert.strictEqual(r.dtype, 'I64');
      assert.deepStrictEqual(Array.from(new BigInt64Array(r.bytes.buffer, r.bytes.byteOffset, 2)), [-3n, 1234567890123n]);
      assert.deepStrictEqual(Array.from(f.raw('t2d').bytes), [1, 0]);
      assert.deepStrictEqual(Array.from(f.raw('w').bytes), Array.from(data.subarray(16, 20)));
      assertThrowsCode(() => f.load('d2t'), 'E_UNSUPPORTED', /tensor 'd2t' has dtype I64/);
      const w = f.load('w');
      assert.deepStrictEqual(Array.from(w.toFloat32()), [1.5]);
      w.dispose();
    } finally {
      f.close();
    }
  });

  it('writes a header the format expects (8-byte aligned, offsets contiguous)', () => {
    const buf = encodeSafetensors({ a: { dtype: 'F16', shape: [3], data: Float32Array.from([1, 2, 3]) }, b: { dtype: 'I32', shape: [1], data: Int32Array.from([7]) } });
    const n = Number(buf.readBigUInt64LE(0));
    assert.strictEqual(n % 8, 0);
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets: number[] }>;
    assert.deepStrictEqual(header['a']!.data_offsets, [0, 6]);
    assert.deepStrictEqual(header['b']!.data_offsets, [6, 10]);
    assert.strictEqual(buf.length, 8 + n + 10);
    assert.throws(() => encodeSafetensors({ a: { dtype: 'F32', shape: [2], data: new Float32Array(3) } }), /'a'.*3 elements/);
  });

  describe('hostile files', () => {
    const ok = (extra = ''): string => `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}${extra}}`;
    const data8 = Buffer.alloc(8, 1);

    it('a missing file is E_IO naming the path', () => {
      const p = path.join(dir, 'does-not-exist.safetensors');
      assertThrowsCode(() => openSafetensors(p), 'E_IO', new RegExp(esc(p)));
    });
    it('a file shorter than 8 bytes', () => {
      const p = tmp('short');
      fs.writeFileSync(p, Buffer.from([1, 2, 3]));
      assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', new RegExp(`${esc(p)}.*shorter than the 8-byte`));
    });
    it('a header length beyond the file, or absurd', () => {
      const p1 = rawFile(ok(), data8, 1000n);
      assertThrowsCode(() => openSafetensors(p1), 'E_FORMAT', new RegExp(`${esc(p1)}.*runs past the end`));
      const p2 = rawFile(ok(), data8, 200n << 20n);
      assertThrowsCode(() => openSafetensors(p2), 'E_FORMAT', new RegExp(`${esc(p2)}.*absurd`));
      const p3 = rawFile(ok(), data8, 2n ** 64n - 1n);
      assertThrowsCode(() => openSafetensors(p3), 'E_FORMAT', /absurd/);
    });
    const badJson: [string, string, RegExp][] = [
      ['truncated', '{"w":{"dtype":"F32"', /unexpected end|expected/],
      ['trailing data', ok() + 'x', /trailing/],
      ['a float', '{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', /only integers/],
      ['true', '{"w":true}', /unsupported value/],
      ['a bad escape', '{"w\\q":{}}', /bad escape/],
      ['an unpaired surrogate', '{"\\ud800":{}}', /surrogate/],
      ['a raw control character', '{"a\u0001":{}}', /control character/],
      ['a top-level array', '[1,2]', /must be an object/],
      ['an integer overflow', '{"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}}', /out of range/],
      ['deep nesting', '{"w":' + '['.repeat(200) + ']'.repeat(200) + '}', /too deep/],
    ];
    for (const [what, header, re] of badJson) {
      it(`invalid JSON: ${what}`, () => {
        const p = rawFile(header, data8);
        assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', new RegExp(esc(p)));
        assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', re);
      });
    }
    const badTensor: [string, string, Buffer, RegExp][] = [
      ['an unknown dtype', '{"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}', data8, /unknown dtype 'Q7'/],
      ['an unsupported dtype', '{"w":{"dtype":"F4","shape":[1],"data_offsets":[0,8]}}', data8, /F4 is not supported/],
      ['a raw-only dtype of the wrong size', '{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}}', data8, /8 bytes but I64 shape \[2\] needs 16/],
      ['a negative shape', '{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', data8, /non-negative integers/],
      ['a non-integer shape', '{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}', data8, /non-negative integers/],
      ['a shape product overflow', '{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}', data8, /overflows/],
      ['a missing shape', '{"w":{"dtype":"F32","data_offsets":[0,8]}}', data8, /shape/],
      ['one offset', '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}}', data8, /\[begin, end\] integers/],
      ['string offsets', '{"w":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}}', data8, /\[begin, end\] integers/],
      ['end before begin', '{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', data8, /begin <= end/],
      ['a size mismatch', '{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', data8, /8 bytes but F32 shape \[3\] needs 12/],
      ['offsets outside the data', '{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', data8, /outside the data section \(8 bytes\)/],
      ['a non-object entry', '{"w":[1]}', data8, /entry must be an object/],
      ['non-string metadata', '{"__metadata__":{"a":1}}', data8, /__metadata__ entry 'a'/],
    ];
    for (const [what, header, data, re] of badTensor) {
      it(`tensor with ${what}`, () => {
        const p = rawFile(header, data);
        assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', new RegExp(`${esc(p)}.*tensor 'w'|${esc(p)}.*__metadata__`));
        assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', re);
      });
    }
    it('overlapping tensors, naming both', () => {
      const p = rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[2],"data_offsets":[6,10]}}', Buffer.alloc(12, 3));
      assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', new RegExp(`${esc(p)}.*tensor 'b'.*overlaps tensor 'a'`));
    });
    it('duplicate tensor names', () => {
      const p = rawFile('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', data8);
      assertThrowsCode(() => openSafetensors(p), 'E_FORMAT', new RegExp(`${esc(p)}.*duplicate key 'w'`));
    });
    it('random corruption of a valid file never crashes', () => {
      const good = encodeSafetensors({ a: { dtype: 'F32', shape: [4, 3], data: randomArray(12, rand) }, b: { dtype: 'BF16', shape: [5], data: randomArray(5, rand) } }, { k: 'v' });
      for (let trial = 0; trial < 300; trial++) {
        const bad = Buffer.from(good);
        const hits = 1 + Math.floor(rand() * 3);
        for (let h = 0; h < hits; h++) bad[Math.floor(rand() * Math.min(bad.length, 8 + 128))] = Math.floor(rand() * 256);
        const cut = rand() < 0.3 ? Math.floor(rand() * bad.length) : bad.length;
        const p = path.join(dir, 'fuzz.safetensors');
        fs.writeFileSync(p, bad.subarray(0, cut));
        try {
          openSafetensors(p).close();
        } catch (e) {
          assert.strictEqual((e as { code?: string }).code, 'E_FORMAT', String(e));
        }
      }
    });
  });
});

describeCuda('safetensors', () => {
  it('loads tensors onto the GPU unchanged', () => {
    const rand = rng(testSeed + 5);
    const x = randomArray(33, rand);
    const p = tmp('cuda');
    writeSafetensors(p, { x: { dtype: 'BF16', shape: [3, 11], data: x } });
    const f = openSafetensors(p);
    const t = f.load('x', 'cuda');
    assert.strictEqual(t.device, 'cuda');
    assert.strictEqual(t.dtype, 'bf16');
    assert.deepStrictEqual(t.toFloat32(), f.load('x').toFloat32());
    f.close();
  });
});
