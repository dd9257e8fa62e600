// Speculation strategies: all produce token trees for SpeculativeDecoder (chains are trees).
export type {
  Speculator,
  SpecSequence,
  SeqRng,
  SamplingConfig,
  Proposal,
  ProposalBatch,
  ProposeContext,
  DraftChainOffer,
  HeadsChainOffer,
  StepReport,
} from './speculator';
export { codedError } from './speculator';
export { DraftModelSpeculator } from './draft_model';
export type { DraftModelOptions, AdaptiveMode } from './draft_model';
export { MedusaHeads, MedusaSpeculator } from './medusa';
export type { MedusaConfig, MedusaOptions } from './medusa';
export { EagleHead, EagleSpeculator } from './eagle';
export type { EagleHeadConfig, EagleOptions } from './eagle';
export { LookaheadSpeculator, NgramPool, candidateTrie, lookaheadLayout, lookaheadMask, lookaheadTreeLayout } from './lookahead';
export type { CandidateTrie, LookaheadOptions, LookaheadLayout } from './lookahead';
export { PromptLookupSpeculator, promptLookup } from './prompt_lookup';
export type { PromptLookupOptions } from './prompt_lookup';
export { HybridSpeculator } from './hybrid';
export type { HybridOptions } from './hybrid';
