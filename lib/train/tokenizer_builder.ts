// A word-level tokenizer.json (HF tokenizers format) for the synthetic corpus: WordLevel model,
// Whitespace pre-tokenizer (words and punctuation runs), <s> prepended by a TemplateProcessing
// post-processor, and a WordPiece decoder with cleanup so decoded text reads "the end." rather
// than "the end ." (no "##" words exist, so the decoder only joins with spaces and cleans up).
//
// The Rust/Python tokenizers library reads this as is; @huggingface/tokenizers (JS), which has no
// WordLevel model, maps a plain word -> id vocabulary to its "Legacy" model and takes the unknown
// token from tokenizer_config.json, which is why that file is written too.
import * as fs from 'fs';
import * as path from 'path';

import { SPECIAL_TOKENS } from './corpus';

export const MAX_VOCAB = 512;

/** word -> id: the special tokens first, then `words` in order (duplicates dropped). */
export function buildVocab(words: readonly string[]): Map<string, number> {
  const vocab = new Map<string, number>();
  for (const w of [...SPECIAL_TOKENS, ...words]) if (!vocab.has(w)) vocab.set(w, vocab.size);
  if (vocab.size > MAX_VOCAB) throw new Error(`tokenizer: ${vocab.size} words exceed the vocabulary limit ${MAX_VOCAB}`);
  return vocab;
}

/** The tokenizer.json object of a vocabulary. */
export function tokenizerJson(vocab: ReadonlyMap<string, number>): Record<string, unknown> {
  const special = SPECIAL_TOKENS.map((content) => ({
    id: vocab.get(content),
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const bos = vocab.get('<s>');
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special,
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [bos], tokens: ['<s>'] } },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordLevel', vocab: Object.fromEntries(vocab), unk_token: '<unk>' },
  };
}

export function tokenizerConfigJson(): Record<string, unknown> {
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    add_bos_token: true,
    model_max_length: 256,
  };
}

/** Writes tokenizer.json and tokenizer_config.json into dir. */
export function writeTokenizerFiles(dir: string, vocab: ReadonlyMap<string, number>, maxLength?: number): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson(vocab), null, 1) + '\n');
  const cfg = tokenizerConfigJson();
  if (maxLength !== undefined) cfg['model_max_length'] = maxLength;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(cfg, null, 2) + '\n');
}
