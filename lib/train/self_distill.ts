// Self-distillation data (Medusa's recipe for heads whose base model's outputs differ from the
// training text): prompts taken from the data, continued greedily by the model itself through the
// runner. Used by `train-medusa --self-distill`, `train-eagle --self-distill` and the embedded
// family's Medusa heads.
import { LlamaModel } from '../models/llama';
import { plainGenerate } from '../plain';

export function concat(docs: readonly Int32Array[]): Int32Array {
  const out = new Int32Array(docs.reduce((n, d) => n + d.length, 0));
  let o = 0;
  for (const d of docs) {
    out.set(d, o);
    o += d.length;
  }
  return out;
}

/** Medusa-1 self-distillation: each line's first tokens, continued greedily by the model itself. */
export async function selfDistill(dir: string, docs: readonly Int32Array[], seqLen: number, maxPositions: number): Promise<Int32Array[]> {
  const model = await LlamaModel.load(dir, { device: 'cpu', maxSequences: Math.min(docs.length, 64) });
  try {
    const promptLen = Math.max(1, Math.min(16, Math.floor(seqLen / 4)));
    const maxNew = Math.max(1, Math.min(seqLen, maxPositions - promptLen - 1));
    const out: Int32Array[] = [];
    for (let i = 0; i < docs.length; i += 64) {
      const prompts = docs.slice(i, i + 64).map((d) => d.slice(0, promptLen));
      const r = await plainGenerate(model, prompts, { maxNewTokens: maxNew });
      r.tokens.forEach((t, b) => out.push(concat([prompts[b]!, t])));
    }
    return out;
  } finally {
    model.dispose();
  }
}
