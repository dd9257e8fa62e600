// Text <-> token ids through the model directory's tokenizer.json (HF tokenizers format), using the
// maintained @huggingface/tokenizers library. A model without tokenizer.json works with ids only.
import * as fs from 'fs';
import * as path from 'path';
import type { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { codedError } from './models/config';

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw codedError('E_FORMAT', `${file}: ${(e as Error).message.split('\n')[0]}`);
  }
}

export class TextTokenizer {
  private constructor(
    private readonly tok: HfTokenizer,
    readonly file: string,
  ) {}

  /** The tokenizer of a model directory, or undefined when it has no tokenizer.json. */
  static load(dir: string): TextTokenizer | undefined {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) return undefined;
    const json = readJson(file);
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const config = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    // Loaded on demand: a model used with ids only never pays for it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { Tokenizer } = require('@huggingface/tokenizers') as typeof import('@huggingface/tokenizers');
    try {
      return new TextTokenizer(new Tokenizer(json as object, config as object), file);
    } catch (e) {
      throw codedError('E_FORMAT', `${file}: unsupported or malformed tokenizer (${(e as Error).message.split('\n')[0]})`);
    }
  }

  /** Token ids of `text` (special tokens such as BOS added as the tokenizer's post-processor says). */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): Int32Array {
    return this.guard(() => {
      const ids = this.tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
      // Ids come from the file's vocabulary: a damaged one (2^31, -1, 1.5) must not wrap in an Int32Array.
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) throw codedError('E_FORMAT', `${this.file}: the vocabulary maps a token to ${String(id)}, not a token id`);
      }
      return Int32Array.from(ids);
    });
  }

  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean } = {}): string {
    return this.guard(() => this.tok.decode(Array.from(ids), { skip_special_tokens: options.skipSpecialTokens ?? false }));
  }

  /** The library builds parts of a tokenizer lazily: a malformed tokenizer.json can fail on first use. */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (typeof (e as { code?: unknown }).code === 'string') throw e;
      throw codedError('E_FORMAT', `${this.file}: unsupported or malformed tokenizer (${(e as Error).message.split('\n')[0]})`);
    }
  }

  /** Id of a token string (e.g. '</s>'), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}

/** id -> token string of a tokenizer.json's vocabulary (BPE / WordPiece maps, Unigram lists) and added tokens. */
function idToToken(json: unknown): Map<number, string> {
  const out = new Map<number, string>();
  const o = json as { model?: { vocab?: unknown }; added_tokens?: unknown } | null;
  const vocab = o?.model?.vocab;
  if (Array.isArray(vocab)) {
    vocab.forEach((e, id) => {
      if (Array.isArray(e) && typeof e[0] === 'string') out.set(id, e[0]);
    });
  } else if (typeof vocab === 'object' && vocab !== null) {
    for (const [tok, id] of Object.entries(vocab as Record<string, unknown>)) if (typeof id === 'number') out.set(id, tok);
  }
  if (Array.isArray(o?.added_tokens)) {
    for (const t of o.added_tokens as { id?: unknown; content?: unknown }[]) if (typeof t.id === 'number' && typeof t.content === 'string') out.set(t.id, t.content);
  }
  return out;
}

/**
 * Where a draft's tokenizer disagrees with its target's on the draft's ids (ids below draftVocab that
 * both tokenizer.json files name, mapped to different tokens): a sentence naming how many and the
 * first, or undefined when they agree or either directory has no tokenizer.json. Speculation stays
 * lossless with any draft; one that speaks another vocabulary only wastes its drafts.
 */
export function tokenizerMismatch(targetDir: string, draftDir: string, draftVocab: number): string | undefined {
  const files = [targetDir, draftDir].map((d) => path.join(d, 'tokenizer.json'));
  if (!files.every((f) => fs.existsSync(f))) return undefined;
  const [t, d] = files.map((f) => idToToken(readJson(f))) as [Map<number, string>, Map<number, string>];
  let differ = 0;
  let shared = 0;
  let first: string | undefined;
  for (let id = 0; id < draftVocab; id++) {
    const tok = d.get(id);
    const other = t.get(id);
    if (tok === undefined || other === undefined) continue;
    shared++;
    if (other !== tok) {
      differ++;
      first ??= `id ${id} is ${JSON.stringify(tok)} for the draft, ${JSON.stringify(other)} for the target`;
    }
  }
  return differ === 0 ? undefined : `the draft's tokenizer differs from the target's at ${differ} of ${shared} ids (${first})`;
}
