import * as assert from 'assert';
import { Tensor } from '../lib/tensor';
import { assertThrowsCode, describeCuda, randomArray, rng } from './helpers';

describe('Tensor', () => {
  it('round-trips f32, i32, u32, u64, f64 exactly', () => {
    const f = Float32Array.from([1.5, -2.25, 3e-8, 65504.5, -0]);
    assert.deepStrictEqual(Tensor.fromArray(f, 'f32', [5]).toArray(), f);
    const i = Int32Array.from([0, -1, 2147483647, -2147483648]);
    assert.deepStrictEqual(Tensor.fromArray(i, 'i32', [2, 2]).toArray(), i);
    const u = Uint32Array.from([0, 4294967295]);
    assert.deepStrictEqual(Tensor.fromArray(u, 'u32').toArray(), u);
    const b = BigUint64Array.from([0n, 2n ** 64n - 1n, 12345678901234567n]);
    assert.deepStrictEqual(Tensor.fromArray(b, 'u64').toArray(), b);
    const d = Float64Array.from([Math.PI, -1e300]);
    assert.deepStrictEqual(Tensor.fromArray(d, 'f64').toArray(), d);
  });

  it('rounds f16 and bf16 to nearest even and round-trips representable values', () => {
    const r = rng(7);
    const x = randomArray(4096, r, -70000, 70000);
    const h = Tensor.fromArray(x, 'f16').toArray() as Float32Array;
    const bf = Tensor.fromArray(x, 'bf16').toArray() as Float32Array;
    for (let k = 0; k < x.length; k++) {
      const v = x[k] as number;
      if (Math.abs(v) < 65504) assert.ok(Math.abs((h[k] as number) - v) <= Math.abs(v) * 2 ** -11 + 2 ** -24, `f16 ${v} -> ${h[k]}`);
      assert.ok(Math.abs((bf[k] as number) - v) <= Math.abs(v) * 2 ** -8, `bf16 ${v} -> ${bf[k]}`);
    }
    // Values exactly representable survive both directions; ties go to even.
    assert.deepStrictEqual(Array.from(Tensor.fromArray([1, 0.5, -2048, 65504, 1 + 2 ** -11, 2 ** -24], 'f16').toFloat32()), [
      1, 0.5, -2048, 65504, 1, 2 ** -24,
    ]);
    assert.deepStrictEqual(Array.from(Tensor.fromArray([1 + 2 ** -8, 1 + 3 * 2 ** -8], 'bf16').toFloat32()), [1, 1 + 2 ** -6]);
    assert.strictEqual((Tensor.fromArray([1e6], 'f16').toArray() as Float32Array)[0], Infinity);
    assert.ok(Number.isNaN((Tensor.fromArray([NaN], 'bf16').toArray() as Float32Array)[0]));
    // Raw bits in, converted values out.
    assert.deepStrictEqual(Array.from(Tensor.fromArray(Uint16Array.from([0x3c00, 0xc000]), 'f16').toFloat32()), [1, -2]);
    assert.deepStrictEqual(Array.from(Tensor.fromArray(Uint16Array.from([0x3f80]), 'bf16').toFloat32()), [1]);
  });

  it('reports dtype, shape, device, numel; views and row slices share the buffer', () => {
    const t = Tensor.fromArray(Float32Array.from([0, 1, 2, 3, 4, 5]), 'f32', [3, 2]);
    assert.strictEqual(t.dtype, 'f32');
    assert.deepStrictEqual(t.shape, [3, 2]);
    assert.strictEqual(t.device, 'cpu');
    assert.strictEqual(t.numel, 6);
    assert.deepStrictEqual(Array.from(t.rows(1, 3).toFloat32()), [2, 3, 4, 5]);
    assert.deepStrictEqual(t.view([6]).shape, [6]);
    const z = Tensor.zeros('i32', [4]);
    assert.deepStrictEqual(Array.from(z.toInt32()), [0, 0, 0, 0]);
    assert.deepStrictEqual(Tensor.empty('bf16', [0, 5]).shape, [0, 5]);
  });

  it('rejects bad shapes, dtypes, devices and values with coded errors', () => {
    assertThrowsCode(() => Tensor.fromArray(new Float32Array(5), 'f32', [2, 2]), 'E_ARG', /4 elements do not match data length 5/);
    assertThrowsCode(() => Tensor.fromArray(new Float32Array(2), 'q8' as never), 'E_ARG', /unknown dtype 'q8'/);
    assertThrowsCode(() => Tensor.fromArray([1.5], 'i32'), 'E_ARG', /not an int32/);
    assertThrowsCode(() => Tensor.fromArray([1], 'u64'), 'E_ARG', /BigUint64Array/);
    assertThrowsCode(() => Tensor.empty('f32', [2, -1]), 'E_ARG', /negative dimension/);
    assertThrowsCode(() => Tensor.empty('f32', [2], 'tpu' as never), 'E_ARG', /unknown device 'tpu'/);
    assertThrowsCode(() => Tensor.fromArray([1, 2], 'f32').view([3]), 'E_ARG', /different element count/);
    assertThrowsCode(() => Tensor.fromArray([1, 2], 'f32').rows(1, 3), 'E_ARG', /out of range/);
    // Shapes are held inline (no allocation per view): eight dimensions at most, named in the error.
    assert.deepStrictEqual(Tensor.fromArray(new Float32Array(6), 'f32', [1, 1, 1, 1, 1, 1, 2, 3]).shape, [1, 1, 1, 1, 1, 1, 2, 3]);
    assertThrowsCode(() => Tensor.empty('f32', [1, 1, 1, 1, 1, 1, 1, 1, 2]), 'E_ARG', /at most 8 dimensions, got 9/);
    assertThrowsCode(() => Tensor.fromArray([1, 2], 'f32').view([1, 1, 1, 1, 1, 1, 1, 1, 2]), 'E_ARG', /at most 8 dimensions, got 9/);
  });

  it('zeros() is all zeros at every size, also where freed blocks of that size held data', () => {
    // Sizes in the small-block cache, between it and the mapping threshold (mapped when zeroed), and past it.
    for (const n of [16, 60_000, 900_000, 1_200_000]) {
      for (let round = 0; round < 2; round++) {
        const dirty = Tensor.fromArray(new Float32Array(n).fill(3), 'f32', [n]);
        dirty.dispose();
        using z = Tensor.zeros('f32', [n]);
        const v = z.toFloat32();
        assert.ok(v.every((x) => x === 0), `zeros of ${n} floats, round ${round}`);
      }
    }
  });

  it('dispose() frees at once, is idempotent, and later use is a coded error', () => {
    const t = Tensor.zeros('f32', [1024]);
    assert.strictEqual(t.disposed, false);
    t.dispose();
    t.dispose();
    assert.strictEqual(t.disposed, true);
    assertThrowsCode(() => t.toArray(), 'E_DISPOSED', /disposed/);
    assertThrowsCode(() => t.shape, 'E_DISPOSED');
    {
      using u = Tensor.zeros('f32', [8]);
      assert.strictEqual(u.numel, 8);
    }
  });

  it('a view keeps its buffer alive after the parent is disposed', () => {
    const t = Tensor.fromArray([1, 2, 3, 4], 'f32');
    const v = t.rows(2, 4);
    t.dispose();
    assert.deepStrictEqual(Array.from(v.toFloat32()), [3, 4]);
  });
});

describeCuda('Tensor', () => {
  it('round-trips every dtype through the GPU', () => {
    const x = randomArray(1000, rng(3));
    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      const host = Tensor.fromArray(x, dt).toArray();
      const dev = Tensor.fromArray(x, dt, [1000], 'cuda');
      assert.strictEqual(dev.device, 'cuda');
      assert.deepStrictEqual(dev.toArray(), host);
      assert.deepStrictEqual(dev.to('cpu').toArray(), host);
      dev.dispose();
    }
    const i = Int32Array.from([1, -2, 3]);
    assert.deepStrictEqual(Tensor.fromArray(i, 'i32', [3], 'cuda').toArray(), i);
  });
});
