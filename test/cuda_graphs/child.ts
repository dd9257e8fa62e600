// One process of test/cuda_graphs.test.ts: SPECDEC_CUDA_GRAPHS is read once per process, so graphs
// on and off are compared across two runs of this script on the same checkpoint and inputs.
// Prints one JSON line: an FNV-1a hash of every logits bit, the greedy tokens, the counters and the
// kernel profile (timed when SPECDEC_CUDA_PROFILE=1).
import { createHash } from 'crypto';
import { LlamaModel } from '../../lib/models/llama';
import { plainGenerate } from '../../lib/plain';
import { cudaKernelProfile, transferCounters } from '../../lib/transfers';

async function main(): Promise<void> {
  const dir = process.argv[2] as string;
  const device = process.argv[3] === 'cpu' ? 'cpu' : 'cuda';
  const model = await LlamaModel.load(dir, { device, kvDtype: 'bf16', maxSequences: 4 });
  const hash = createHash('sha256');
  const tokens: number[] = [];
  const before = transferCounters();
  try {
    const V = model.config.vocabSize;
    // Decode by hand: 1-token forwards (the same shape every step, one plan until the context
    // crosses an attention chunk), then 3-token chains, then a 5-node tree forked off each step.
    const s = model.createSequence();
    let next = 1;
    const prompt = Int32Array.from({ length: 17 }, (_, i) => (i * 31 + 7) % V);
    const take = async (inputs: Parameters<LlamaModel['forward']>[0], commit: Int32Array[], auxLayers?: number[]): Promise<void> => {
      const out = await model.forward(inputs, auxLayers ? { auxLayers } : {});
      const logits = out.logits.toFloat32();
      out.logits.dispose();
      hash.update(Buffer.from(logits.buffer, logits.byteOffset, logits.byteLength));
      if (out.aux) {
        // EAGLE-3's features (the residual streams entering the layers asked for), graphed too.
        const aux = out.aux.toFloat32();
        out.aux.dispose();
        hash.update(Buffer.from(aux.buffer, aux.byteOffset, aux.byteLength));
      }
      model.commit(inputs.map((x) => x.seq), commit);
      // Greedy on the host from the last row: the next token depends on every bit above.
      let best = 0;
      const row = logits.length / V - 1;
      for (let j = 1; j < V; j++) if ((logits[row * V + j] as number) > (logits[row * V + best] as number)) best = j;
      next = best;
      tokens.push(best);
    };
    await take([{ seq: s, tokens: prompt }], [Int32Array.from(prompt.keys())]);
    for (let t = 0; t < 24; t++) await take([{ seq: s, tokens: Int32Array.of(next) }], [Int32Array.of(0)]);
    for (let t = 0; t < 8; t++) await take([{ seq: s, tokens: Int32Array.of(next, (next + 1) % V, (next + 2) % V) }], [Int32Array.of(0)]);
    for (let t = 0; t < 8; t++) {
      await take([{ seq: s, tokens: Int32Array.of(next, 3, 4, 5, 6), parents: Int32Array.of(-1, 0, 0, 1, 1) }], [Int32Array.of(0)]);
    }
    // Decode steps that also return the inputs of layers 0 and 1 (an EAGLE-3 target's forwards).
    for (let t = 0; t < 8; t++) await take([{ seq: s, tokens: Int32Array.of(next) }], [Int32Array.of(0)], [0, 1]);
    // Plain greedy decoding through the library (native chains), two sequences.
    const res = await plainGenerate(model, [prompt, prompt.subarray(3)], { maxNewTokens: 20, stopTokens: [] });
    for (const t of res.tokens) tokens.push(...t);
  } finally {
    model.dispose();
  }
  const after = transferCounters();
  process.stdout.write(`${JSON.stringify({
    logits: hash.digest('hex'),
    tokens,
    graphLaunches: after.graphLaunches - before.graphLaunches,
    graphCaptures: after.graphCaptures - before.graphCaptures,
    deviceOps: after.deviceOps - before.deviceOps,
    profile: cudaKernelProfile(),
  })}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
