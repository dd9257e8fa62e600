// Reasoning models (DeepSeek-R1 and its distills, Qwen3, QwQ) think in a <think> ... </think> block
// before they answer. vLLM's --reasoning-parser splits a chat reply into `reasoning_content` (the
// block) and `content` (the answer); this file does so for a whole reply and as it streams, and
// makes a grammar (response_format, a tool call) apply to the answer only, as vLLM's structured
// outputs do with a reasoning parser.
//
// The block is open where the reply begins with <think>, or where the prompt left one open (the
// chat template wrote <think> at the start of the assistant's turn: DeepSeek-R1's, Qwen3-2507
// Thinking's). Elsewhere the reply is content, whole (Qwen3 with enable_thinking false, whose
// template closes an empty block in the prompt).
import { codedError } from './errors';
import type { GrammarState, TokenGrammar, TokenVocabulary } from './grammar';

/** vLLM's parser names; both read <think> ... </think> as above. */
export type ReasoningFormat = 'deepseek_r1' | 'qwen3';
export const REASONING_FORMATS: readonly ReasoningFormat[] = ['deepseek_r1', 'qwen3'];

export const THINK_OPEN = '<think>';
export const THINK_CLOSE = '</think>';

/** Whether a prompt's text leaves a think block open (its last <think> after its last </think>). */
export function promptOpensReasoning(promptText: string): boolean {
  return promptText.lastIndexOf(THINK_OPEN) > promptText.lastIndexOf(THINK_CLOSE);
}

/** promptOpensReasoning on token ids, where the markers are single tokens: the last of them decides (no decoding of the prompt). */
export function promptOpensReasoningIds(ids: ArrayLike<number>, openId: number, closeId: number): boolean {
  for (let i = ids.length - 1; i >= 0; i--) {
    if (ids[i] === openId) return true;
    if (ids[i] === closeId) return false;
  }
  return false;
}

/** A reply split: the reasoning (null: none) and the answer (null: none, as vLLM's). */
export interface ReasoningSplit {
  readonly reasoning: string | null;
  readonly content: string | null;
}

/** A whole reply's reasoning and answer (`opened`: the prompt left the block open). */
export function splitReasoning(text: string, opened: boolean): ReasoningSplit {
  let t = text;
  if (!opened) {
    const lead = t.trimStart();
    if (!lead.startsWith(THINK_OPEN)) return { reasoning: null, content: text };
    t = lead.slice(THINK_OPEN.length);
  }
  const end = t.indexOf(THINK_CLOSE);
  // (Cut short while thinking: reasoning only.)
  if (end < 0) return { reasoning: t, content: null };
  const content = t.slice(end + THINK_CLOSE.length);
  return { reasoning: t.slice(0, end), content: content === '' ? null : content };
}

/** The longest suffix of `t` that is a proper prefix of `marker`. */
function partialSuffix(t: string, marker: string): number {
  for (let k = Math.min(marker.length - 1, t.length); k > 0; k--) if (marker.startsWith(t.slice(t.length - k))) return k;
  return 0;
}

/**
 * A reply split as it streams: push() each piece and get the reasoning and answer text that can be
 * shown now (a piece that may be the start of a marker is held back); end() gives the rest. Joined,
 * they are splitReasoning's (null: '').
 */
export class ReasoningStream {
  private mode: 'start' | 'think' | 'answer';
  private held = '';

  constructor(opened: boolean) {
    this.mode = opened ? 'think' : 'start';
  }

  push(piece: string): { readonly reasoning: string; readonly content: string } {
    let t = this.held + piece;
    this.held = '';
    let reasoning = '';
    if (this.mode === 'start') {
      const lead = t.trimStart();
      if (lead === '' || THINK_OPEN.startsWith(lead)) {
        this.held = t;
        return { reasoning: '', content: '' };
      }
      if (!lead.startsWith(THINK_OPEN)) {
        this.mode = 'answer';
        return { reasoning: '', content: t };
      }
      this.mode = 'think';
      t = lead.slice(THINK_OPEN.length);
    }
    if (this.mode === 'think') {
      const end = t.indexOf(THINK_CLOSE);
      if (end < 0) {
        const k = partialSuffix(t, THINK_CLOSE);
        this.held = t.slice(t.length - k);
        return { reasoning: t.slice(0, t.length - k), content: '' };
      }
      reasoning = t.slice(0, end);
      t = t.slice(end + THINK_CLOSE.length);
      this.mode = 'answer';
    }
    return { reasoning, content: t };
  }

  /** What is held back: reasoning while thinking, else answer. */
  end(): { readonly reasoning: string; readonly content: string } {
    const t = this.held;
    this.held = '';
    return this.mode === 'think' ? { reasoning: t, content: '' } : { reasoning: '', content: t };
  }
}

// States of AfterReasoning: before a block may open, inside the block (with how many bytes of
// </think> its text ends with), then the answer's grammar's own.
class ReasoningState implements GrammarState {
  constructor(
    /** -1: the block may still open; 0..7: inside it, that many bytes of </think> matched. */
    readonly matched: number,
    readonly key: string,
  ) {}
}
const START = new ReasoningState(-1, 'reasoning:start');
const CLOSE_BYTES = new TextEncoder().encode(THINK_CLOSE);
const THINK = Array.from({ length: CLOSE_BYTES.length }, (_, k) => new ReasoningState(k, `reasoning:think:${k}`));

/** KMP's failure function of </think>: the longest proper border of its first k + 1 bytes. */
const FAIL = (() => {
  const f = new Int32Array(CLOSE_BYTES.length);
  for (let i = 1, k = 0; i < CLOSE_BYTES.length; i++) {
    while (k > 0 && CLOSE_BYTES[i] !== CLOSE_BYTES[k]) k = f[k - 1] as number;
    if (CLOSE_BYTES[i] === CLOSE_BYTES[k]) k++;
    f[i] = k;
  }
  return f;
})();

/** Bytes of </think> matched after `bytes` from `k` matched; CLOSE_BYTES.length where they complete it. */
function matchClose(k: number, bytes: Uint8Array): number {
  for (const b of bytes) {
    while (k > 0 && CLOSE_BYTES[k] !== b) k = FAIL[k - 1] as number;
    if (CLOSE_BYTES[k] === b) k++;
    if (k === CLOSE_BYTES.length) return k;
  }
  return k;
}

/**
 * A grammar for the answer after a think block: inside the block any token is allowed but one that
 * would write </think> in pieces (the block's close token alone closes it, so that the text's block
 * and the grammar's agree); the close token starts `inner`. Where the block may still open (the
 * prompt did not open it), the open token is allowed beside inner's first tokens. The markers must
 * be single tokens (they are in DeepSeek-R1's and Qwen3's vocabularies).
 */
export class AfterReasoning implements TokenGrammar {
  readonly vocabSize: number;
  readonly name: string;
  private readonly thinkMasks: (Uint32Array | undefined)[] = [];
  private readonly startMasks = new Map<string, Uint32Array>();

  constructor(
    readonly inner: TokenGrammar,
    private readonly vocabulary: TokenVocabulary,
    private readonly openId: number,
    private readonly closeId: number,
    private readonly opened: boolean,
  ) {
    this.vocabSize = inner.vocabSize;
    this.name = `${inner.name} after reasoning`;
    if (vocabulary.size !== this.vocabSize) throw codedError('E_ARG', `AfterReasoning: a vocabulary of ${vocabulary.size} ids for a grammar of ${this.vocabSize}`);
    for (const [id, what] of [[openId, 'open'], [closeId, 'close']] as const) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.vocabSize) throw codedError('E_ARG', `AfterReasoning: the ${what} token ${String(id)} is not an id in [0, ${this.vocabSize})`);
    }
  }

  start(): GrammarState {
    return this.opened ? (THINK[0] as ReasoningState) : START;
  }

  next(state: GrammarState, token: number): GrammarState | undefined {
    if (state instanceof ReasoningState && state.matched >= 0) {
      if (!Number.isInteger(token) || token < 0 || token >= this.vocabSize) return undefined;
      if (token === this.closeId) return this.inner.start();
      const b = this.vocabulary.bytesOf(token);
      const k = b ? matchClose(state.matched, b) : 0;
      return k === CLOSE_BYTES.length ? undefined : THINK[k];
    }
    if (state === START) return token === this.openId ? THINK[0] : this.inner.next(this.inner.start(), token);
    return this.inner.next(state, token);
  }

  accepts(state: GrammarState): boolean {
    // (A reply may end while thinking: it has no answer then.)
    if (state instanceof ReasoningState) return state.matched >= 0 || this.inner.accepts(this.inner.start());
    return this.inner.accepts(state);
  }

  complete(state: GrammarState): boolean {
    return state instanceof ReasoningState ? false : (this.inner.complete?.(state) ?? false);
  }

  allowed(state: GrammarState, stops?: ArrayLike<number>): Uint32Array {
    if (state instanceof ReasoningState && state.matched >= 0) return this.thinkMask(state.matched);
    if (state !== START) return this.inner.allowed(state, stops);
    // The answer's first tokens, or the block's open token (kept per set of stops).
    const key = stops ? Array.from(stops).join(',') : '';
    let m = this.startMasks.get(key);
    if (!m) {
      m = Uint32Array.from(this.inner.allowed(this.inner.start(), stops));
      m[this.openId >>> 5] = (m[this.openId >>> 5] as number) | (1 << (this.openId & 31));
      this.startMasks.set(key, m);
    }
    return m;
  }

  /** Inside the block with k bytes of </think> matched: every id but those that would complete it (the close token aside). */
  private thinkMask(k: number): Uint32Array {
    let m = this.thinkMasks[k];
    if (!m) {
      m = new Uint32Array(Math.ceil(this.vocabSize / 32));
      for (let t = 0; t < this.vocabSize; t++) {
        const b = this.vocabulary.bytesOf(t);
        if (t === this.closeId || !b || matchClose(k, b) < CLOSE_BYTES.length) m[t >>> 5] = (m[t >>> 5] as number) | (1 << (t & 31));
      }
      this.thinkMasks[k] = m;
    }
    return m;
  }
}
