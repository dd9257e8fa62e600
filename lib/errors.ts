// Errors with a `code`, the same shape as the ones the native side throws (cpp/core/error.h,
// cpp/napi), so callers can branch on err.code whichever layer detected the problem.

/**
 * Every code specdec puts on an Error (README "Errors"):
 * - `E_ARG`: a bad argument (shape, dtype, device, range, token id, flag); the message names it.
 * - `E_FORMAT`: a malformed checkpoint, safetensors file, config.json or tokenizer.
 * - `E_IO`: a file that cannot be opened, mapped or read.
 * - `E_KV_FULL`: the KV cache has no free pages left (the message gives the numbers); nothing changed.
 * - `E_OOM`: a host or device allocation failed.
 * - `E_CUDA`: a CUDA runtime call failed.
 * - `E_NO_CUDA`: `device: 'cuda'` was asked for but no usable GPU/driver (the message says why).
 * - `E_LOAD`: the native addon could not be loaded (NativeLoadError lists every candidate tried).
 * - `E_UNSUPPORTED`: valid, but not implemented for this backend, dtype or build.
 * - `E_DISPOSED`: a tensor, model or cache used after dispose().
 * - `E_BUSY`: an operation started while another one on the same object is still running.
 * - `E_CLOSED`: a request to an engine or server that is closed (or closing).
 * - `E_NUMERIC`: a computation produced non-finite values (e.g. training diverged).
 * - `E_INTERNAL`: a broken internal invariant (a bug: please report it).
 */
export type ErrorCode =
  | 'E_ARG'
  | 'E_FORMAT'
  | 'E_IO'
  | 'E_KV_FULL'
  | 'E_OOM'
  | 'E_CUDA'
  | 'E_NO_CUDA'
  | 'E_LOAD'
  | 'E_UNSUPPORTED'
  | 'E_DISPOSED'
  | 'E_BUSY'
  | 'E_CLOSED'
  | 'E_NUMERIC'
  | 'E_INTERNAL';

/** Every ErrorCode, for code that checks a value at run time. */
export const ERROR_CODES: readonly ErrorCode[] = [
  'E_ARG', 'E_FORMAT', 'E_IO', 'E_KV_FULL', 'E_OOM', 'E_CUDA', 'E_NO_CUDA', 'E_LOAD',
  'E_UNSUPPORTED', 'E_DISPOSED', 'E_BUSY', 'E_CLOSED', 'E_NUMERIC', 'E_INTERNAL',
];

export type CodedError = Error & { code: ErrorCode };

export function codedError(code: ErrorCode, message: string): CodedError {
  const e = new Error(message) as CodedError;
  e.code = code;
  return e;
}

/** A bad argument (E_ARG); the message names the argument. */
export function argError(message: string): CodedError {
  return codedError('E_ARG', message);
}

/**
 * An options argument: an object (E_ARG naming `what` otherwise: null, a number, an array); an
 * optional one may be left out (undefined gives {}). Option objects are read field by field, so a
 * non-object would be a TypeError deep inside.
 */
export function optionsArg<T extends object>(x: T | undefined, what: string, optional = false): T {
  if (x === undefined && optional) return {} as T;
  if (typeof x !== 'object' || x === null || Array.isArray(x)) {
    throw argError(`${what}: expected an options object, got ${x === null ? 'null' : Array.isArray(x) ? 'an array' : typeof x}`);
  }
  noSymbols(x, what, 2);
  return x;
}

/**
 * A symbol is the one value that throws where option checks compare it (`x >= 0`) or print it
 * (`${x}`): E_ARG naming the field, in an options object, the plain objects and arrays inside it.
 */
function noSymbols(x: object, what: string, depth: number): void {
  for (const [k, v] of Object.entries(x)) {
    if (typeof v === 'symbol') throw argError(`${what}: ${k}: expected a number, string, boolean, array or object, got a symbol`);
    if (depth > 1 && typeof v === 'object' && v !== null && (Array.isArray(v) || Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null)) {
      noSymbols(v as object, `${what}: ${k}`, depth - 1);
    }
  }
}

/** A value in an error message, whatever it is (String() throws on a symbol, `${}` on a symbol too). */
export function shown(x: unknown): string {
  if (typeof x === 'symbol') return x.toString();
  if (typeof x === 'bigint') return `${x}n`;
  try {
    return Array.isArray(x) ? `[${x.map(shown).join(',')}]` : String(x);
  } catch {
    return typeof x;
  }
}

/** A stopTokens option: undefined, or an array (or typed array) of integer token ids (E_ARG otherwise). */
export function checkStopTokens(x: unknown): void {
  if (x !== undefined && (!(Array.isArray(x) || ArrayBuffer.isView(x)) || !Array.from(x as ArrayLike<unknown>).every((t) => Number.isInteger(t)))) {
    throw argError(`stopTokens must be an array of integer token ids, got ${shown(x)}`);
  }
}

/** An ignoreEos option: undefined or a boolean (E_ARG otherwise). */
export function checkIgnoreEos(x: unknown): void {
  if (x !== undefined && typeof x !== 'boolean') throw argError(`ignoreEos must be true or false, got ${shown(x)}`);
}

/** prediction: undefined, or token ids in [0, vocabSize) (an array or a typed array). */
export function checkPrediction(x: unknown, vocabSize: number): void {
  if (x === undefined) return;
  if (!(Array.isArray(x) || ArrayBuffer.isView(x))) throw argError(`prediction must be an array of token ids, got ${shown(x)}`);
  const a = x as ArrayLike<unknown>;
  for (let i = 0; i < a.length; i++) {
    const t = a[i];
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= vocabSize) throw argError(`prediction[${i}] = ${String(t)} is not a token id in [0, ${vocabSize})`);
  }
}

/** minTokens: undefined, or an integer >= 0. */
export function checkMinTokens(x: unknown): void {
  if (x !== undefined && !(typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) throw argError(`minTokens must be an integer >= 0, got ${shown(x)}`);
}

/** A path argument: a non-empty string (E_ARG naming `what` otherwise). */
export function pathArg(x: unknown, what: string): string {
  if (typeof x !== 'string' || x.length === 0) throw argError(`${what}: expected a path (a non-empty string), got ${x === null ? 'null' : typeof x === 'string' ? 'an empty string' : typeof x}`);
  return x;
}

/** True when `e` is an Error carrying one of specdec's codes (native or TypeScript side). */
export function isCodedError(e: unknown): e is CodedError {
  return e instanceof Error && (ERROR_CODES as readonly unknown[]).includes((e as { code?: unknown }).code);
}
