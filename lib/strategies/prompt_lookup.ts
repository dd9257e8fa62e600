// Prompt lookup decoding: find the longest n-gram (maxNgram down to minNgram) ending the history
// that occurred before in prompt + output (most recent occurrence), and propose the tokens that
// followed it as a chain. No model; drafts are deterministic (one-hot rejection when sampling).
import type { CausalLM } from '../models/causal_lm';
import { chainTree } from '../tree';
import { codedError, type ProposalBatch, type SpecSequence, type Speculator } from './speculator';

export interface PromptLookupOptions {
  readonly maxNgram?: number;
  readonly minNgram?: number;
  /** Tokens proposed per step (at most). */
  readonly numDraft?: number;
}

/**
 * The continuation after the most recent earlier occurrence of the longest suffix n-gram of
 * `history` (n from maxNgram down to minNgram), at most `numDraft` tokens; [] when none.
 */
export function promptLookup(history: readonly number[], maxNgram: number, minNgram: number, numDraft: number): number[] {
  const L = history.length;
  for (let n = Math.min(maxNgram, L - 1); n >= minNgram; n--) {
    // Most recent occurrence first: start positions i < L - n (the suffix itself excluded).
    for (let i = L - n - 1; i >= 0; i--) {
      let match = true;
      for (let k = 0; k < n; k++) {
        if (history[i + k] !== history[L - n + k]) {
          match = false;
          break;
        }
      }
      if (match) return history.slice(i + n, Math.min(i + n + numDraft, L)) as number[];
    }
  }
  return [];
}

export class PromptLookupSpeculator implements Speculator {
  readonly name = 'prompt-lookup';
  readonly wantsHidden = false;
  readonly maxNgram: number;
  readonly minNgram: number;
  readonly numDraft: number;

  constructor(opts: PromptLookupOptions = {}) {
    this.maxNgram = opts.maxNgram ?? 3;
    this.minNgram = opts.minNgram ?? 1;
    this.numDraft = opts.numDraft ?? 10;
    if (!(Number.isInteger(this.minNgram) && this.minNgram >= 1 && Number.isInteger(this.maxNgram) && this.maxNgram >= this.minNgram)) {
      throw codedError('E_ARG', `prompt lookup: need 1 <= minNgram <= maxNgram, got ${this.minNgram}, ${this.maxNgram}`);
    }
    if (!(Number.isInteger(this.numDraft) && this.numDraft >= 1)) throw codedError('E_ARG', `prompt lookup: numDraft must be >= 1, got ${this.numDraft}`);
  }

  attach(_model: CausalLM): void {}
  async prefill(): Promise<void> {}

  async propose(seqs: readonly SpecSequence[]): Promise<ProposalBatch> {
    return {
      proposals: seqs.map((s) => {
        const root = s.history[s.history.length - 1] as number;
        const k = Math.min(this.numDraft, s.maxDepth);
        return chainTree(root, k > 0 ? promptLookup(s.history, this.maxNgram, this.minNgram, k) : []);
      }),
    };
  }

  async update(): Promise<void> {}
  release(_seq: SpecSequence): void {}
  dispose(): void {}
}
