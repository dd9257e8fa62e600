// Errors with a `code` (E_ARG, E_FORMAT, E_KV_FULL, ...), the same shape as the ones the native
// side throws, so callers can branch on err.code whichever layer detected the problem.
export type CodedError = Error & { code: string };

export function codedError(code: string, message: string): CodedError {
  const e = new Error(message) as CodedError;
  e.code = code;
  return e;
}

/** A bad argument (E_ARG); the message names the argument. */
export function argError(message: string): CodedError {
  return codedError('E_ARG', message);
}
