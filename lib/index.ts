// specdec: speculative decoding for Node.js. The public API.
export { native, loadBinding, loadedBinding, NativeLoadError } from './native';
export type { NativeBinding, LoadAttempt, LoadedBinding } from './native';
export { Tensor, asTensor, disposeAll } from './tensor';
export type { DType, Device, HostArray } from './tensor';
export { backends, resolveDevice } from './backend';
export { codedError, isCodedError, ERROR_CODES } from './errors';
export type { ErrorCode, CodedError } from './errors';
export { defaultModelPaths } from './default_models';
export type { DefaultModelPaths } from './default_models';
export type { BackendReport } from './backend';
export { cudaKernelProfile, setCudaKernelProfiling, transferCounters, transfersSince } from './transfers';
export type { KernelProfile, TransferStats } from './transfers';

// Kernels: paged KV cache + tree attention, sampling, verification, model layers.
export * as kv from './kv';
export { KvCache } from './kv';
export * as sampling from './sampling';
export type { SamplingOptions, Penalties, LogitBias } from './sampling';
export { promptLogitsBudget, type TokenLogprobs } from './logprobs';
export { verify, verifyMany } from './verify';
export type { VerifyInput, VerifyOutput, VerifyMode } from './verify';
export * as layers from './layers';
export { openSafetensors, writeSafetensors, encodeSafetensors } from './safetensors';
export { openTorchCheckpoint } from './torch_checkpoint';
export { convertTorchWeights, type ConvertOptions, type ConvertResult } from './convert';
export type { SafetensorsEntry, SafetensorsReader } from './safetensors';

// Models.
export type { CausalLM, ModelConfig, SequenceInput, ForwardOptions, ForwardOutput, VerifyStaging, StagedVerify, VerifiedPaths, SpecChainSequence, SpecChainOptions, SpecChainResult, MedusaChainSequence, MedusaChainTemplate, MedusaChainOptions, MedusaChainResult } from './models/causal_lm';
export { LlamaModel } from './models/llama';
export type { LlamaLoadOptions } from './models/llama';
export { parseLlamaConfig, readLlamaConfig } from './models/config';
export type { LlamaConfig } from './models/config';
export { TextTokenizer, tokenizerMismatch, type ChatMessage, type ChatTemplateOptions } from './tokenizer';
export { GrammarCursor, JsonGrammar, TokenVocabulary, type GrammarState, type JsonGrammarOptions, type TokenGrammar } from './grammar';
export { JsonSchemaGrammar, type JsonSchemaGrammarOptions } from './json_schema';
export { checkToolChoice, checkTools, constrainedToolCalls, parseToolCalls, RequiredCallsReader, TOOL_CALL_FORMATS, toolCallGrammar, toolCallSchema, ToolCallStream } from './tool_calls';
export { AfterReasoning, promptOpensReasoning, promptOpensReasoningIds, REASONING_FORMATS, ReasoningStream, splitReasoning } from './reasoning';
export type { ReasoningFormat, ReasoningSplit } from './reasoning';
export type { ParsedReply, RequiredCallEvent, ToolCall, ToolCallFormat, ToolChoice, ToolDefinition, ToolFunction } from './tool_calls';

// Decoding: the plain baseline, the speculative decoder, token trees and the strategies.
export { plainGenerate } from './plain';
export type { PlainOptions, PlainResult } from './plain';
export { SpeculativeDecoder } from './decoder';
export type { SpeculativeDecoderOptions, GenerateOptions, GenerateResult, DecodeStats, Generation } from './decoder';
export * as tree from './tree';
export * from './strategies';
// Tree sizing for the hardware: the forward's cost curve and the choice of the proposal.
export { ForwardCost, RecentTimes, calibrateForwardCost, forwardCost, knownForwardCost, setForwardCost } from './cost_model';
export type { CalibrationOptions } from './cost_model';
export * as treeSizing from './tree_sizing';
export { cleanUpTokenizationSpaces, generateText, settledText } from './text';
export type { TextCodec, TextGenerateOptions, TextChunk, TextResult, TextGeneration } from './text';

// Serving: continuous batching over one model, and the OpenAI-compatible HTTP server.
export { Engine } from './engine/engine';
export type { EngineOptions, RequestOptions, KvPages } from './engine/engine';
export { CompletionServer } from './server/server';
export type { ServerOptions } from './server/server';
