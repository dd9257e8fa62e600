// specdec: speculative decoding for Node.js.
export { native, loadBinding, loadedBinding, NativeLoadError } from './native';
export type { NativeBinding, LoadAttempt, LoadedBinding } from './native';
export { Tensor, asTensor, disposeAll } from './tensor';
export type { DType, Device, HostArray } from './tensor';
export { backends, resolveDevice } from './backend';
export type { BackendReport } from './backend';
export type { CausalLM, ModelConfig, SequenceInput, ForwardOptions, ForwardOutput } from './models/causal_lm';
