// `specdec info --model DIR`: what the loader will make of a checkpoint directory, without loading its
// weights: the architecture and sizes from config.json, where the weights are (and their dtype and
// size), the tokenizer, the chat template and the stop tokens; each problem as the loader would name it.
import * as fs from 'fs';
import * as path from 'path';
import { readLlamaConfig } from '../models/config';
import { findWeights } from '../models/llama';
import { openSafetensors } from '../safetensors';
import { TextTokenizer } from '../tokenizer';

export interface ModelReport {
  readonly dir: string;
  /** Architecture and sizes, or why config.json does not load. */
  readonly config: { architecture: string; layers: number; hidden: number; heads: number; kvHeads: number; vocab: number; maxPositions: number; eos: number[] } | { error: string };
  /** The weight files, their stored dtypes and bytes, or why the loader will not find them. */
  readonly weights: { files: string[]; dtypes: string[]; bytes: number } | { error: string };
  /** tokenizer.json, tokenizer.model (SentencePiece), none, or why it does not load. */
  readonly tokenizer: { file: string; chatTemplate: boolean; cleansUpSpaces: boolean } | { none: string } | { error: string };
}

const why = (e: unknown): string => {
  const err = e as Error & { code?: string };
  return `${err.message.split('\n')[0]}${err.code ? ` [${err.code}]` : ''}`;
};

export function modelReport(dir: string): ModelReport {
  let config: ModelReport['config'];
  try {
    const c = readLlamaConfig(dir);
    config = { architecture: c.architecture, layers: c.numLayers, hidden: c.hiddenSize, heads: c.numHeads, kvHeads: c.numKvHeads, vocab: c.vocabSize, maxPositions: c.maxPositions, eos: [...c.eosTokenIds] };
  } catch (e) {
    config = { error: why(e) };
  }
  let weights: ModelReport['weights'];
  try {
    const src = findWeights(dir);
    const files = src.file !== undefined ? [src.file] : [...new Set(Object.values(src.weightMap ?? {}))].sort();
    const dtypes = new Set<string>();
    let bytes = 0;
    for (const f of files) {
      const full = path.join(dir, f);
      bytes += fs.statSync(full).size;
      const st = openSafetensors(full);
      try {
        for (const n of st.names()) dtypes.add(st.info(n).dtype);
      } finally {
        st.close();
      }
    }
    weights = { files, dtypes: [...dtypes].sort(), bytes };
  } catch (e) {
    weights = { error: why(e) };
  }
  let tokenizer: ModelReport['tokenizer'];
  try {
    const t = TextTokenizer.load(dir);
    tokenizer = t ? { file: path.basename(t.file), chatTemplate: t.hasChatTemplate, cleansUpSpaces: t.cleansUpSpaces } : { none: 'no tokenizer.json or tokenizer.model: prompts as token ids only' };
  } catch (e) {
    tokenizer = { error: why(e) };
  }
  return { dir, config, weights, tokenizer };
}

export function formatModelReport(r: ModelReport): string[] {
  const c = r.config, w = r.weights, t = r.tokenizer;
  return [
    `model:             ${r.dir}`,
    'error' in c ? `  config:          ${c.error}`
      : `  config:          ${c.architecture}, ${c.layers} layers, hidden ${c.hidden}, ${c.heads}/${c.kvHeads} heads, vocabulary ${c.vocab}, ${c.maxPositions} positions, stop tokens ${c.eos.join(', ') || 'none'}`,
    'error' in w ? `  weights:         ${w.error}`
      : `  weights:         ${w.files.length === 1 ? w.files[0] : `${w.files.length} shards`}, ${w.dtypes.join('/')}, ${w.bytes >= 2 ** 30 ? `${(w.bytes / 2 ** 30).toFixed(2)} GiB` : `${(w.bytes / 2 ** 20).toFixed(1)} MiB`}`,
    'error' in t ? `  tokenizer:       ${t.error}` : 'none' in t ? `  tokenizer:       ${t.none}`
      : `  tokenizer:       ${t.file}${t.chatTemplate ? ', chat template' : ', no chat template'}${t.cleansUpSpaces ? ', cleans up tokenization spaces' : ''}`,
  ];
}
