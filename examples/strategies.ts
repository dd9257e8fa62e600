// Each strategy from TypeScript on the embedded default family (models/default). The README shows
// these lines; test/examples.test.ts runs this file so they stay true.
//   npx tsc -p tsconfig.json && node dist/examples/strategies.js
// (from an installed package: node node_modules/specdec/dist/examples/strategies.js; in your own
// code import from 'specdec' instead of '../lib').
import {
  DraftModelSpeculator,
  EagleHead,
  EagleSpeculator,
  HybridSpeculator,
  LlamaModel,
  LookaheadSpeculator,
  MedusaHeads,
  MedusaSpeculator,
  PromptLookupSpeculator,
  SpeculativeDecoder,
  TextTokenizer,
  defaultModelPaths,
  generateText,
  type Speculator,
} from '../lib';

const models = defaultModelPaths();

export async function main(maxNewTokens = 48, log: (s: string) => void = console.log): Promise<Record<string, string>> {
  const target = await LlamaModel.load(models.target); // CUDA when available, else CPU
  const draft = await LlamaModel.load(models.draft);
  const tokenizer = TextTokenizer.load(models.target)!;
  const medusa = MedusaHeads.load(models.medusa, { device: target.device });
  const eagle = EagleHead.load(models.eagle, { device: target.device });
  const eagle3 = EagleHead.load(models.eagle3, { device: target.device });

  const strategies: Record<string, () => Speculator | undefined> = {
    plain: () => undefined,
    draft: () => new DraftModelSpeculator({ draft, k: 4, adaptive: 'heuristic' }),
    medusa: () => new MedusaSpeculator({ heads: medusa, choices: 'mc_sim_7b_63' }),
    // EAGLE-2's dynamic tree (8 children a node, 5 levels, 59 nodes); without them: sized per step.
    eagle: () => new EagleSpeculator({ head: eagle, topK: 8, depth: 5, totalTokens: 59 }),
    // An EAGLE-3 head (trained by training-time test: its deep guesses hold up), as a 6-token chain.
    eagle3: () => new EagleSpeculator({ head: eagle3, topK: 1, depth: 5, totalTokens: 6 }),
    lookahead: () => new LookaheadSpeculator({ W: 5, N: 3, G: 5 }),
    promptLookup: () => new PromptLookupSpeculator({ maxNgram: 3 }),
    // Lookahead speeds up the draft model, which drafts for the target.
    hybrid: () => new HybridSpeculator({ draft, draftSpeculator: new LookaheadSpeculator({ W: 4, N: 3, G: 4 }), k: 6 }),
  };
  const texts: Record<string, string> = {};
  for (const [name, make] of Object.entries(strategies)) {
    const speculator = make();
    using decoder = new SpeculativeDecoder({ target, ...(speculator ? { speculator } : {}) }); // greedy: exactly the plain output
    const gen = generateText(decoder, tokenizer, 'once upon a time', { maxNewTokens, stopStrings: ['the end'] });
    let text = '';
    for await (const chunk of gen) text += chunk.text; // streamed as each step's tokens arrive
    const { stats } = await gen.result;
    texts[name] = text;
    log(`${name.padEnd(12)} ${stats.tokensPerForward.toFixed(2)} tokens/forward, acceptance ${stats.acceptanceRate.toFixed(2)}: ${text.slice(0, 60)}...`);
  }

  // Sampling: exact target distribution (temperature, top-k/top-p applied to target and draft alike).
  using sampled = new SpeculativeDecoder({
    target,
    speculator: new DraftModelSpeculator({ draft, k: 4 }),
    sampling: { temperature: 0.8, topP: 0.95, seed: 42 },
  });
  const [a, b] = await sampled.generateBatch([tokenizer.encode('the dog'), tokenizer.encode('one day')], { maxNewTokens });
  log(`sampled:     ${tokenizer.decode(a!.tokens)} | ${tokenizer.decode(b!.tokens)}`);

  eagle3.dispose();
  eagle.dispose();
  medusa.dispose();
  draft.dispose();
  target.dispose();
  return texts;
}

if (require.main === module) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
