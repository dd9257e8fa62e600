// Text in, text out: tokenizes the prompt, streams decoded text chunks as the decoder emits tokens,
// and stops at stop strings (the text is cut before the stop string; DESIGN §5 generate()).
import type { GenerateOptions, GenerateResult, Generation } from './decoder';
import { codedError } from './errors';

/** What text generation needs of a tokenizer (TextTokenizer fits). */
export interface TextCodec {
  encode(text: string): Int32Array;
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
}

/** What generateText decodes with: a SpeculativeDecoder, or a request adapter over an Engine. */
export interface TokenGenerator {
  generate(prompt: Int32Array | readonly number[], opts: GenerateOptions): Generation;
}

export interface TextGenerateOptions {
  readonly maxNewTokens: number;
  readonly stopTokens?: readonly number[];
  /** Stop once the output text contains one of these; it is not part of the returned text. */
  readonly stopStrings?: readonly string[];
  readonly signal?: AbortSignal;
}

export interface TextChunk {
  /** Tokens emitted by this step. */
  readonly tokens: Int32Array;
  /** Text they completed (may be empty while a multi-byte character is incomplete). */
  readonly text: string;
}

export interface TextResult extends GenerateResult {
  readonly text: string;
  /** The stop string that ended generation, if any. */
  readonly stopString?: string;
}

export interface TextGeneration extends AsyncIterable<TextChunk> {
  readonly result: Promise<TextResult>;
}

/** Cuts `text` at the first stop string; returns the cut text and the string found. */
function cutAtStop(text: string, stops: readonly string[]): { text: string; stop?: string } {
  let best = -1;
  let which: string | undefined;
  for (const s of stops) {
    const i = text.indexOf(s);
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
  const stops = opts.stopStrings ?? [];
  if (stops.some((s) => typeof s !== 'string' || s.length === 0)) throw codedError('E_ARG', 'stopStrings must be non-empty strings');
  const ids = typeof prompt === 'string' ? codec.encode(prompt) : prompt;
  const decode = (t: readonly number[]): string => codec.decode(t, { skipSpecialTokens: true });
  const gen = decoder.generate(ids, {
    maxNewTokens: opts.maxNewTokens,
    ...(opts.stopTokens ? { stopTokens: opts.stopTokens } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    // Decoding the whole output per token is quadratic; a stop string can only complete in the
    // text of the last few tokens, so decode a tail long enough to hold the longest one.
    ...(stops.length > 0
      ? {
          shouldStop: (toks: readonly number[]) => {
            const tail = decode(toks.slice(-(Math.max(...stops.map((s) => s.length)) + 8)));
            return stops.some((s) => tail.includes(s));
          },
        }
      : {}),
  });
  let shown = 0;
  const all: number[] = [];
  const result = gen.result.then((r): TextResult => {
    const cut = cutAtStop(decode(Array.from(r.tokens)), stops);
    return { ...r, text: cut.text, ...(cut.stop !== undefined ? { stopString: cut.stop } : {}) };
  });
  result.catch(() => undefined);
  return {
    result,
    async *[Symbol.asyncIterator](): AsyncGenerator<TextChunk> {
      for await (const toks of gen) {
        all.push(...toks);
        let text = cutAtStop(decode(all), stops).text;
        // Hold back an incomplete multi-byte character (decoded as U+FFFD) until it completes.
        while (text.endsWith('\uFFFD')) text = text.slice(0, -1);
        const delta = text.length > shown ? text.slice(shown) : '';
        shown = Math.max(shown, text.length);
        yield { tokens: toks, text: delta };
      }
    },
  };
}
