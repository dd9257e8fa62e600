// Device tensors: the native Tensor class with TypeScript types and Symbol.dispose.
import { argError } from './errors';
import { native } from './native';

/// <reference path="../typings/native.d.ts" />
export type DType = SpecdecNative.DType;
export type Device = SpecdecNative.Device;
export type Tensor = SpecdecNative.Tensor;
export type HostArray = SpecdecNative.HostArray;

let patched = false;
function tensorClass(): SpecdecNative.TensorStatic {
  const T = native().Tensor;
  if (!patched) {
    patched = true;
    const proto = (T as unknown as { prototype: Record<symbol, unknown> }).prototype;
    // `using t = Tensor.empty(...)` frees at scope exit.
    if (typeof Symbol.dispose === 'symbol' && !(Symbol.dispose in proto)) {
      Object.defineProperty(proto, Symbol.dispose, {
        value: function (this: SpecdecNative.Tensor) {
          this.dispose();
        },
      });
    }
  }
  return T;
}

/** Adds the JS-side helpers to a tensor returned by any native op. */
export function asTensor(t: SpecdecNative.Tensor): Tensor {
  tensorClass();
  return t as Tensor;
}

export const Tensor = {
  empty(dtype: DType, shape: readonly number[], device: Device = 'cpu'): Tensor {
    return tensorClass().empty(dtype, shape, device) as Tensor;
  },
  zeros(dtype: DType, shape: readonly number[], device: Device = 'cpu'): Tensor {
    return tensorClass().zeros(dtype, shape, device) as Tensor;
  },
  fromArray(data: HostArray | readonly number[], dtype: DType, shape?: readonly number[], device: Device = 'cpu'): Tensor {
    if (typeof data !== 'object' || data === null) throw argError(`fromArray: data: expected an array or a typed array, got ${data === null ? 'null' : typeof data}`);
    return tensorClass().fromArray(data, dtype, shape ?? [data.length], device) as Tensor;
  },
  /**
   * Row k of the result is row rows[k] of tensors[k] (2-D, one dtype, width and device), copied on
   * that device: nothing goes through JavaScript. With `width`, the tensors must have it (E_ARG);
   * with `device`, the result is moved there in one copy.
   */
  gatherRows(tensors: readonly Tensor[], rows: Int32Array | readonly number[], width?: number, device?: Device): Tensor {
    return tensorClass().gatherRows(tensors, rows, width, device) as Tensor;
  },
  /** True if `x` is a native tensor. */
  is(x: unknown): x is Tensor {
    return x instanceof (tensorClass() as unknown as new () => object);
  },
};

/** Disposes every tensor given (undefined entries skipped). */
export function disposeAll(...ts: (SpecdecNative.Tensor | undefined)[]): void {
  for (const t of ts) t?.dispose();
}
