// Text in, text out: tokenizes the prompt, streams decoded text chunks as the decoder emits tokens,
// and stops at stop strings (the text is cut before the stop string; DESIGN §5 generate()).
import type { GenerateOptions, GenerateResult, Generation } from './decoder';
import { codedError, optionsArg } from './errors';
import type { TokenGrammar } from './grammar';
import type { TokenLogprobs } from './logprobs';

/** What text generation needs of a tokenizer (TextTokenizer fits). */
export interface TextCodec {
  /** `addSpecialTokens: false`: without the BOS and other specials the tokenizer adds (default: with them). */
  encode(text: string, options?: { addSpecialTokens?: boolean }): Int32Array;
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean }): string;
  /**
   * Whether decode() cleans up tokenization spaces (cleanUpTokenizationSpaces) unless told
   * `cleanUpSpaces: false`. Streams then decode without it and clean up only settled text: the
   * clean-up is not local (" ' " -> "'", but " '." stays), so an output's text is not its
   * prefixes' texts extended.
   */
  readonly cleansUpSpaces?: boolean;
  /**
   * Each id's bytes as it decodes inside text (TextTokenizer.tokenBytes): what grammars read (the
   * server's response_format). Optional: a codec without it serves text, not grammars.
   */
  tokenBytes?(vocabSize: number): (Uint8Array | null)[];
  /** The id of a token by its text (an added token's content), if it is one token. Optional. */
  tokenToId?(token: string): number | undefined;
}

/** transformers' clean_up_tokenization (and the tokenizers library's): spaces before punctuation and English contractions removed. */
export function cleanUpTokenizationSpaces(text: string): string {
  return text
    .replace(/ \./g, '.')
    .replace(/ \?/g, '?')
    .replace(/ !/g, '!')
    .replace(/ ,/g, ',')
    .replace(/ ' /g, "'")
    .replace(/ n't/g, "n't")
    .replace(/ 'm/g, "'m")
    .replace(/ 's/g, "'s")
    .replace(/ 've/g, "'ve")
    .replace(/ 're/g, "'re");
}

/**
 * The text of a growing output that its next tokens cannot change, from its text so far decoded
 * without clean-up (`raw`): less an incomplete character at the end (U+FFFD), and, where the codec
 * cleans up, less an end within three characters of a space, then cleaned up. (Every clean-up
 * pattern starts with a space and is at most four characters long, and the clean-up only deletes
 * spaces: with no space in its last three characters, the text's clean-up is the start of the
 * clean-up of any text that extends it.)
 */
export function settledText(raw: string, cleanUp: boolean): string {
  const n = settledLength(raw, cleanUp);
  return cleanUp ? cleanUpTokenizationSpaces(raw.slice(0, n)) : raw.slice(0, n);
}

/** How much of `raw` settledText keeps (before the clean-up). */
function settledLength(raw: string, cleanUp: boolean): number {
  let n = raw.length;
  while (n > 0 && raw.charCodeAt(n - 1) === 0xfffd) n--;
  // The longest start with no space in its last three characters (n moves back to each space found).
  if (cleanUp) for (let i = n - 1; i >= 0 && i >= n - 3; i--) if (raw.charCodeAt(i) === 0x20) n = i;
  return n;
}

/**
 * settledText and the whole clean-up of a growing output, in time for what it added: a settled
 * start cuts the clean-up in two (no pattern crosses it: the argument of settledText), so the
 * clean-up of the start settled last is kept and only the rest is cleaned each call (cleaning the
 * whole text at every step made a long stream quadratic).
 */
export class SettledText {
  private raw0 = '';
  private clean0 = '';

  constructor(private readonly cleanUp: boolean) {}

  /** `settled`: settledText(raw); `full`: raw cleaned up whole (the text if the output ended here). */
  of(raw: string): { settled: string; full: string } {
    const n = settledLength(raw, this.cleanUp);
    if (!this.cleanUp) return { settled: raw.slice(0, n), full: raw };
    // (A raw text that is not the last one extended starts over.)
    if (n < this.raw0.length || !raw.startsWith(this.raw0)) this.raw0 = this.clean0 = '';
    const settled = this.clean0 + cleanUpTokenizationSpaces(raw.slice(this.raw0.length, n));
    this.raw0 = raw.slice(0, n);
    this.clean0 = settled;
    return { settled, full: settled + cleanUpTokenizationSpaces(raw.slice(n)) };
  }
}

/** What generateText decodes with: a SpeculativeDecoder, or a request adapter over an Engine. */
export interface TokenGenerator {
  generate(prompt: Int32Array | readonly number[], opts: GenerateOptions): Generation;
}

export interface TextGenerateOptions {
  readonly maxNewTokens: number;
  readonly stopTokens?: readonly number[];
  /** The model's EOS ids do not end generation (GenerateOptions.ignoreEos). */
  readonly ignoreEos?: boolean;
  /** Stop once the output text contains one of these; it is not part of the returned text. */
  readonly stopStrings?: readonly string[];
  readonly signal?: AbortSignal;
  /** Record log-probabilities (GenerateOptions.logprobs): on each chunk and on the result. */
  readonly logprobs?: number;
  /** Record the prompt's log-probabilities (GenerateOptions.promptLogprobs): on the result. */
  readonly promptLogprobs?: number;
  /** GenerateOptions.minTokens: no stop token before it, and no stop string within its text. */
  readonly minTokens?: number;
  /** GenerateOptions.grammar: the output follows it (e.g. a JsonGrammar over the codec's vocabulary). */
  readonly grammar?: TokenGrammar;
  /** GenerateOptions.prediction: tokens the output is expected to repeat (prompt lookup drafts from them). */
  readonly prediction?: Int32Array | readonly number[];
}

export interface TextChunk {
  /** Tokens emitted by this step (none in the last chunk when it only releases held-back text). */
  readonly tokens: Int32Array;
  /**
   * Text they completed: may be empty while a multi-byte character is incomplete or the text's end
   * could still begin a stop string. The chunks' texts add up to the result's `text`.
   */
  readonly text: string;
  /** With the `logprobs` option: the log-probabilities of `tokens`. */
  readonly logprobs?: TokenLogprobs;
}

export interface TextResult extends GenerateResult {
  readonly text: string;
  /** The stop string that ended generation, if any. */
  readonly stopString?: string;
}

export interface TextGeneration extends AsyncIterable<TextChunk> {
  readonly result: Promise<TextResult>;
}

/**
 * The text of a growing token list without decoding all of it at every step (which made a long
 * stream quadratic: ~1.5 ms to decode 1000 tokens, ten times a small model's step). Each call
 * decodes a window: CONTEXT tokens before the last mark (more if those decode to nothing, e.g.
 * skipped special tokens), then everything after it, and appends what the window's text adds
 * beyond its context's text to the text at the mark. The context lets decoders that look back
 * (the space before a word, which the first token of a text does not get; a character split over
 * byte tokens; "##" continuations; punctuation clean-up) decide as they would on the whole list.
 * The mark moves to the end whenever the text ends on a complete character. If the window's text
 * does not start with its context's text, the whole list is decoded. This assumes a decoder looks
 * back only a few tokens, as the HF decoders do; test/text.test.ts checks it against decoding the
 * whole list for WordPiece, byte-level BPE and Metaspace with byte fallback.
 */
export class IncrementalText {
  static readonly CONTEXT = 8;
  private mark = 0;
  private markText = '';

  constructor(private readonly decode: (ids: readonly number[]) => string) {}

  /** decode(all), where `all` extends the list of the previous call. */
  of(all: readonly number[]): string {
    let c = Math.max(0, this.mark - IncrementalText.CONTEXT);
    let ctx = this.mark > c ? this.decode(all.slice(c, this.mark)) : '';
    // Context tokens that decode to nothing (skipped special tokens) are no context: look further
    // back, unless nothing before the mark has any text (then there is no context to find, and an
    // id-only codec would make every step decode everything).
    while (ctx === '' && c > 0 && this.markText !== '') {
      c = Math.max(0, c - 4 * (this.mark - c));
      ctx = this.decode(all.slice(c, this.mark));
    }
    const win = this.decode(all.slice(c));
    const full = win.startsWith(ctx) ? this.markText + win.slice(ctx.length) : this.decode(all);
    if (!full.endsWith('\uFFFD')) {
      this.mark = all.length;
      this.markText = full;
    }
    return full;
  }
}

/** The length of the longest end of `text` that some stop string begins with (less than it whole). */
function stopPrefixAtEnd(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops)
    for (let n = Math.min(s.length - 1, text.length); n > best; n--)
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
  return best;
}

/**
 * Cuts `text` at the first stop string that ends past `after` characters (min_tokens' text does not
 * stop); returns the cut text and the string found.
 */
function cutAtStop(text: string, stops: readonly string[], after = 0): { text: string; stop?: string } {
  let best = -1;
  let which: string | undefined;
  for (const s of stops) {
    const i = text.indexOf(s, Math.max(0, after - s.length + 1));
    if (i >= 0 && (best < 0 || i < best)) {
      best = i;
      which = s;
    }
  }
  return which === undefined ? { text } : { text: text.slice(0, best), stop: which };
}

/**
 * Streams text: `for await (const chunk of generateText(decoder, tokenizer, 'Once', { maxNewTokens: 64 }))`.
 * Await `.result` for the tokens, the whole text and the statistics.
 */
export function generateText(
  decoder: TokenGenerator,
  codec: TextCodec,
  prompt: string | Int32Array,
  opts: TextGenerateOptions,
): TextGeneration {
  optionsArg(opts, 'generateText options');
  const stops = opts.stopStrings ?? [];
  if (stops.some((s) => typeof s !== 'string' || s.length === 0)) throw codedError('E_ARG', 'stopStrings must be non-empty strings');
  const ids = typeof prompt === 'string' ? codec.encode(prompt) : prompt;
  const decode = (t: readonly number[]): string => codec.decode(t, { skipSpecialTokens: true });
  const cleanUp = codec.cleansUpSpaces === true;
  const decodeRaw = cleanUp ? (t: readonly number[]): string => codec.decode(t, { skipSpecialTokens: true, cleanUpSpaces: false }) : decode;
  // min_tokens: a stop string counts only where it ends past the text of the first minTokens tokens.
  const minTokens = opts.minTokens ?? 0;
  let minText: number | undefined;  // the first minTokens tokens' text length, once there are more (it no longer changes)
  const stopAfter = (toks: readonly number[], from = 0): number => {
    if (minTokens <= from) return 0;
    if (toks.length <= minTokens) return Infinity;
    if (from > 0) return decode(toks.slice(from, minTokens)).length;
    return (minText ??= decode(toks.slice(0, minTokens)).length);
  };
  const gen = decoder.generate(ids, {
    maxNewTokens: opts.maxNewTokens,
    ...(opts.stopTokens ? { stopTokens: opts.stopTokens } : {}),
    ...(opts.ignoreEos !== undefined ? { ignoreEos: opts.ignoreEos } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.logprobs !== undefined ? { logprobs: opts.logprobs } : {}),
    ...(opts.promptLogprobs !== undefined ? { promptLogprobs: opts.promptLogprobs } : {}),
    ...(minTokens > 0 ? { minTokens } : {}),
    ...(opts.grammar ? { grammar: opts.grammar } : {}),
    ...(opts.prediction ? { prediction: opts.prediction } : {}),
    // Decoding the whole output per token is quadratic; a stop string can only complete in the
    // text of the last few tokens, so decode a tail long enough to hold the longest one.
    ...(stops.length > 0
      ? {
          shouldStop: (toks: readonly number[]) => {
            const from = Math.max(0, toks.length - (Math.max(...stops.map((s) => s.length)) + 8));
            return cutAtStop(decode(toks.slice(from)), stops, stopAfter(toks, from)).stop !== undefined;
          },
        }
      : {}),
  });
  let shown = 0;
  const all: number[] = [];
  const text = new IncrementalText(decodeRaw);
  const settle = new SettledText(cleanUp);
  const result = gen.result.then((r): TextResult => {
    const toks = Array.from(r.tokens);
    const cut = cutAtStop(decode(toks), stops, stopAfter(toks));
    return { ...r, text: cut.text, ...(cut.stop !== undefined ? { stopString: cut.stop } : {}) };
  });
  result.catch(() => undefined);
  return {
    result,
    async *[Symbol.asyncIterator](): AsyncGenerator<TextChunk> {
      for await (const toks of gen) {
        const lp = opts.logprobs !== undefined ? gen.logprobsOf?.(all.length, all.length + toks.length) : undefined;
        for (const t of toks) all.push(t);
        const now = settle.of(text.of(all));
        const found = cutAtStop(now.full, stops, stopAfter(all));
        let cut = found.text;
        if (found.stop === undefined) {
          // Only text the next tokens cannot change (an incomplete multi-byte character, decoded
          // as U+FFFD, waits until it completes; so does an end the clean-up may still change) ...
          cut = now.settled;
          // ... less an end a stop string may still begin with (the stop string is never shown).
          cut = cut.slice(0, cut.length - stopPrefixAtEnd(cut, stops));
        } else while (cut.endsWith('\uFFFD')) cut = cut.slice(0, -1);
        const delta = cut.length > shown ? cut.slice(shown) : '';
        shown = Math.max(shown, cut.length);
        yield lp ? { tokens: toks, text: delta, logprobs: lp } : { tokens: toks, text: delta };
      }
      // The end: what was held back and stayed text (the streamed chunks add up to result.text).
      const rest = cutAtStop(settle.of(text.of(all)).full, stops, stopAfter(all)).text;
      if (rest.length > shown) {
        yield { tokens: new Int32Array(0), text: rest.slice(shown) };
        shown = rest.length;
      }
    },
  };
}
