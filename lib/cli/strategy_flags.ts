// Strategy flags of `specdec generate` (DESIGN §6): --draft DIR | --medusa DIR | --eagle DIR |
// --lookahead W,N,G | --prompt-lookup N, turned into a speculator factory and a StrategyHook for lib/cli/generate.ts.
// One strategy at a time; `--draft DIR` together with --medusa/--lookahead/--prompt-lookup is the
// hybrid (the second strategy speeds up the draft model). Bad values are one-line E_ARG errors.
import type { CausalLM } from '../models/causal_lm';
import { LlamaModel } from '../models/llama';
import { SpeculativeDecoder } from '../decoder';
import { DraftModelSpeculator } from '../strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../strategies/eagle';
import { HybridSpeculator } from '../strategies/hybrid';
import { LookaheadSpeculator } from '../strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../strategies/medusa';
import { MEDUSA_PRESETS } from '../tree';
import { PromptLookupSpeculator } from '../strategies/prompt_lookup';
import { tokenizerMismatch } from '../tokenizer';
import { DEFAULT_TREE_RESERVE } from '../spec_engine';
import { codedError, type Speculator } from '../strategies/speculator';
import type { GenerateRecord, StrategyHook } from './generate';
import { logprobsRecord } from './logprobs_record';

export interface StrategyFlags {
  readonly draft?: string;
  readonly medusa?: string;
  /** An EAGLE-1/2 or EAGLE-3 head directory. */
  readonly eagle?: string;
  /** --eagle-tree K,D,N: EAGLE-2's top_k, depth and most draft nodes (default: 8, 5, sized per step). */
  readonly eagleTree?: readonly [number, number, number | undefined];
  /** W, N, G */
  readonly lookahead?: readonly [number, number, number];
  /** Longest n-gram matched (prompt lookup's maxNgram). */
  readonly promptLookup?: number;
  /** --lookup-corpus: finished requests' tokens kept for prompt lookup across requests (corpusTokens). */
  readonly lookupCorpus?: number;
  /** Draft tokens per step for --draft (default: chosen per step by the cost model). */
  readonly draftK?: number;
  /** A fixed Medusa tree (a preset, cut to the heads; default: sized per step by the cost model). */
  readonly medusaTree?: string;
}

/** The strategy part of `specdec generate --help`. */
export const STRATEGY_USAGE = `speculative strategies (without one: plain decoding, the baseline):
  --draft DIR         a smaller draft model ('default': the embedded draft)
  --draft-k K         draft tokens per step with --draft (default 4; 6 in a hybrid)
  --medusa DIR        Medusa heads on the target ('default': the embedded heads); the tree is the
                      subtree of the 63-node one that pays on this hardware, chosen per step
  --medusa-tree NAME  a fixed Medusa tree instead: ${Object.keys(MEDUSA_PRESETS).join(', ')} (cut to the heads)
  --eagle DIR         an EAGLE-1/2 or EAGLE-3 head for the target (model.safetensors; 'default': the
                      embedded EAGLE-1/2 head, 'default3': the embedded EAGLE-3 head); its tree is
                      EAGLE-2's dynamic one, as large as pays on this hardware, chosen per step
  --eagle-tree K,D[,N] the tree's top-k per node, expansion depth and (fixed) most draft nodes
                      (the KV room kept per sequence, 64 tokens, grows to hold N + 1 nodes, up to
                      the context; so do --draft-k and a lookahead step)
  --lookahead W,N,G   lookahead (Jacobi) decoding: window W, n-gram size N, G verified n-grams
  --prompt-lookup N   prompt lookup: match n-grams of up to N tokens in prompt + output
  --lookup-corpus T   with --prompt-lookup: also match in the last T tokens of finished requests
                      (prompts and outputs: repeated answers, tool calls, templates draft from them)
  --draft DIR with --medusa, --lookahead or --prompt-lookup is the hybrid: that strategy speeds up
                      the draft model, which drafts for the target`;

export const STRATEGY_FLAGS = ['--draft', '--medusa', '--eagle', '--lookahead', '--prompt-lookup', '--lookup-corpus', '--draft-k', '--medusa-tree', '--eagle-tree'] as const;

function int(flag: string, v: string, min: number): number {
  const n = Number(v);
  if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) throw codedError('E_ARG', `${flag}: expected an integer >= ${min}, got '${v}'`);
  return n;
}

/**
 * Picks the strategy flags out of argv. Returns them and the remaining arguments. Throws E_ARG
 * (one line) on a missing or malformed value or an impossible combination.
 */
export function parseStrategyFlags(argv: readonly string[]): { flags: StrategyFlags; rest: string[] } {
  const got = new Map<string, string>();
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (!(STRATEGY_FLAGS as readonly string[]).includes(name)) {
      rest.push(a);
      continue;
    }
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (value === undefined) throw codedError('E_ARG', `${name}: missing value`);
    if (eq < 0 && value.startsWith('--')) throw codedError('E_ARG', `${name}: missing value (got the flag '${value}')`);
    if (got.has(name)) throw codedError('E_ARG', `${name} given twice`);
    got.set(name, value);
  }
  const flags: { -readonly [K in keyof StrategyFlags]: StrategyFlags[K] } = {};
  const draft = got.get('--draft');
  const medusa = got.get('--medusa');
  const lookahead = got.get('--lookahead');
  const pl = got.get('--prompt-lookup');
  const k = got.get('--draft-k');
  const tree = got.get('--medusa-tree');
  const eagle = got.get('--eagle');
  const eagleTree = got.get('--eagle-tree');
  if (eagleTree !== undefined) {
    if (eagle === undefined) throw codedError('E_ARG', '--eagle-tree needs --eagle');
    const p = eagleTree.split(',');
    if (p.length !== 2 && p.length !== 3) throw codedError('E_ARG', `--eagle-tree: expected K,D or K,D,N (integers), got '${eagleTree}'`);
    flags.eagleTree = [int('--eagle-tree K', p[0] as string, 1), int('--eagle-tree D', p[1] as string, 0), p[2] !== undefined ? int('--eagle-tree N', p[2], 1) : undefined];
  }
  if (eagle !== undefined) {
    if (draft !== undefined) throw codedError('E_ARG', '--eagle drafts for the target itself: it does not combine with --draft');
    flags.eagle = eagle;
  }
  if (tree !== undefined) {
    if (medusa === undefined) throw codedError('E_ARG', '--medusa-tree needs --medusa');
    if (!(tree in MEDUSA_PRESETS)) throw codedError('E_ARG', `--medusa-tree: unknown tree '${tree}' (have ${Object.keys(MEDUSA_PRESETS).join(', ')})`);
    flags.medusaTree = tree;
  }
  if (draft !== undefined) flags.draft = draft;
  if (medusa !== undefined) flags.medusa = medusa;
  if (lookahead !== undefined) {
    const p = lookahead.split(',');
    if (p.length !== 3) throw codedError('E_ARG', `--lookahead: expected W,N,G (three integers), got '${lookahead}'`);
    flags.lookahead = [int('--lookahead W', p[0] as string, 1), int('--lookahead N', p[1] as string, 2), int('--lookahead G', p[2] as string, 1)];
  }
  if (pl !== undefined) flags.promptLookup = int('--prompt-lookup', pl, 1);
  const corpus = got.get('--lookup-corpus');
  if (corpus !== undefined) {
    if (pl === undefined) throw codedError('E_ARG', '--lookup-corpus needs --prompt-lookup');
    flags.lookupCorpus = int('--lookup-corpus', corpus, 1);
  }
  if (k !== undefined) {
    if (draft === undefined) throw codedError('E_ARG', '--draft-k needs --draft');
    flags.draftK = int('--draft-k', k, 1);
  }
  const others = [medusa, lookahead, pl, eagle].filter((x) => x !== undefined).length;
  if (others > 1) throw codedError('E_ARG', '--medusa, --eagle, --lookahead and --prompt-lookup are exclusive (with --draft, one of them but --eagle speeds up the draft)');
  return { flags, rest };
}

export interface SpeculatorDeps {
  /** Loads a draft model directory (default: LlamaModel.load on the target's device). */
  readonly loadModel?: (dir: string) => Promise<CausalLM>;
  /** Directories that `--draft default` / `--medusa default` / `--eagle default` / `--eagle default3` stand for (the embedded models). */
  readonly defaults?: { readonly draft?: string; readonly medusa?: string; readonly eagle?: string; readonly eagle3?: string };
  /** Where warnings go (default: stderr, prefixed 'specdec: warning: '). */
  readonly warn?: (message: string) => void;
  /** The KV room kept per sequence for a tree (treeRoomFor; default 64): a draft model's cache is sized for it. */
  readonly treeTokens?: number;
}

/** The largest tree (nodes, root included) the flags fix: --eagle-tree N + 1, --draft-k + 1, a lookahead step. 0: none fixed. */
function fixedTreeNodes(flags: StrategyFlags): number {
  let n = 0;
  if (flags.eagleTree?.[2] !== undefined) n = Math.max(n, flags.eagleTree[2] + 1);
  if (flags.draftK !== undefined) n = Math.max(n, flags.draftK + 1);
  if (flags.lookahead !== undefined) n = Math.max(n, 1 + (flags.lookahead[0] + flags.lookahead[2]) * (flags.lookahead[1] - 1));
  return n;
}

function treeFlags(flags: StrategyFlags): string {
  const parts: string[] = [];
  if (flags.eagleTree?.[2] !== undefined) parts.push(`--eagle-tree ${flags.eagleTree.filter((x) => x !== undefined).join(',')}`);
  if (flags.draftK !== undefined) parts.push(`--draft-k ${flags.draftK}`);
  if (flags.lookahead !== undefined) parts.push(`--lookahead ${flags.lookahead.join(',')}`);
  return parts.join(', ');
}

/**
 * KV tokens to keep per sequence for its next tree (the engine's treeReserveTokens, the cache's
 * treeTokens): 64, or the largest tree the flags fix (explicit settings win), at most `context`
 * (the positions of a sequence: a chain never needs more, and a larger tree would double the cache
 * for nodes that rarely pay). Trees beyond it are cut (SpecSequence.maxNodes).
 */
export function treeRoomFor(flags: StrategyFlags, context: number): number {
  return Math.max(DEFAULT_TREE_RESERVE, Math.min(fixedTreeNodes(flags), context));
}

/** What a factory built: the speculator and what must be freed with it. */
export interface BuiltSpeculator {
  readonly speculator: Speculator | undefined;
  dispose(): void;
}

/**
 * A factory for the speculator the flags ask for (undefined speculator: plain decoding). Medusa
 * heads must match the model they run on (the target, or the draft in a hybrid).
 */
export function speculatorFactory(flags: StrategyFlags, deps: SpeculatorDeps = {}): (target: CausalLM) => Promise<BuiltSpeculator> {
  const resolve = (what: 'draft' | 'medusa' | 'eagle', dir: string): string => {
    const key = what === 'eagle' && dir === 'default3' ? 'eagle3' : dir === 'default' ? what : undefined;
    if (key === undefined) return dir;
    const d = deps.defaults?.[key];
    if (d === undefined) throw codedError('E_ARG', `--${what} ${dir}: no embedded ${key === 'eagle3' ? 'EAGLE-3 head' : what} is available`);
    return d;
  };
  return async (target: CausalLM) => {
    const owned: { dispose(): void }[] = [];
    const dispose = (): void => {
      for (const o of owned.reverse()) o.dispose();
    };
    const warn = deps.warn ?? ((m: string) => process.stderr.write(`specdec: warning: ${m}\n`));
    const room = deps.treeTokens ?? DEFAULT_TREE_RESERVE;
    const want = fixedTreeNodes(flags);
    if (want > room) warn(`${want}-node trees (${treeFlags(flags)}) are cut to ${room} nodes: the KV room kept per sequence, at most its context`);
    try {
      const load = deps.loadModel ?? ((dir: string) => LlamaModel.load(dir, { device: target.device, ...(deps.treeTokens !== undefined ? { treeTokens: deps.treeTokens } : {}) }));
      let draft: CausalLM | undefined;
      if (flags.draft !== undefined) {
        const dir = resolve('draft', flags.draft);
        draft = await load(dir);
        owned.push(draft);
        // A draft of another tokenizer is lossless but useless: said, not refused.
        const targetDir = (target as { dir?: unknown }).dir;
        const mismatch = typeof targetDir === 'string' ? tokenizerMismatch(targetDir, dir, draft.config.vocabSize) : undefined;
        if (mismatch !== undefined) {
          warn(`--draft ${flags.draft}: ${mismatch}; its drafts will rarely be accepted (the output is unaffected)`);
        }
      }
      const base = draft ?? target;
      let second: Speculator | undefined;
      if (flags.medusa !== undefined) {
        const dir = resolve('medusa', flags.medusa);
        const heads = MedusaHeads.load(dir, { device: base.device });
        owned.push(heads);
        // Named here, where it is known which model the heads run on (in a hybrid: the draft).
        const on = draft ? `the draft model (${flags.draft})` : 'the target model';
        for (const [what, theirs, ours] of [
          ['hidden size', heads.config.hiddenSize, base.config.hiddenSize],
          ['vocabulary size', heads.config.vocabSize, base.config.vocabSize],
        ] as const) {
          if (theirs !== ours) throw codedError('E_ARG', `--medusa ${flags.medusa}: the heads have ${what} ${theirs} but ${on} has ${ours}`);
        }
        const preset = flags.medusaTree !== undefined ? MEDUSA_PRESETS[flags.medusaTree] : undefined;
        second = new MedusaSpeculator(preset ? { heads, choices: preset.filter((c) => c.length <= heads.config.numHeads) } : { heads });
      } else if (flags.eagle !== undefined) {
        const head = EagleHead.load(resolve('eagle', flags.eagle), { device: target.device });
        owned.push(head);
        const [topK, depth, totalTokens] = flags.eagleTree ?? [undefined, undefined, undefined];
        second = new EagleSpeculator({ head, ...(topK !== undefined ? { topK } : {}), ...(depth !== undefined ? { depth } : {}), ...(totalTokens !== undefined ? { totalTokens } : {}) });
      } else if (flags.lookahead !== undefined) {
        const [W, N, G] = flags.lookahead;
        second = new LookaheadSpeculator({ W, N, G });
      } else if (flags.promptLookup !== undefined) {
        second = new PromptLookupSpeculator({ maxNgram: flags.promptLookup, minNgram: 1, ...(flags.lookupCorpus !== undefined ? { corpusTokens: flags.lookupCorpus } : {}) });
      }
      let speculator: Speculator | undefined = second;
      if (draft) {
        speculator = second
          ? new HybridSpeculator({ draft, draftSpeculator: second, k: flags.draftK ?? 6 })
          : new DraftModelSpeculator(flags.draftK !== undefined ? { draft, k: flags.draftK } : { draft });
      }
      if (speculator) {
        speculator.attach(target);
        const s = speculator;
        // Disposed first (reverse order): it frees its sequences before the draft model goes.
        owned.push({ dispose: () => s.dispose() });
      }
      return { speculator, dispose };
    } catch (e) {
      dispose();
      throw e;
    }
  };
}

/** The StrategyHook for lib/cli/generate.ts: runs the batch with the flags' speculator. */
export function strategyHook(deps: SpeculatorDeps = {}): StrategyHook {
  return async ({ flags, target, prompts, decode, onTokens, signal, grammar }) => {
    const strategy = flags.strategy as StrategyFlags;
    const room = deps.treeTokens ?? treeRoomFor(strategy, flags.maxContext ?? target.config.maxPositions);
    const built = await speculatorFactory(strategy, { ...deps, treeTokens: room })(target);
    try {
      const dec = new SpeculativeDecoder({
        target,
        ...(built.speculator ? { speculator: built.speculator, treeReserveTokens: room } : {}),
        sampling: { temperature: flags.temperature, topK: flags.topK, topP: flags.topP, ...(flags.minP !== undefined && flags.minP > 0 ? { minP: flags.minP } : {}), seed: flags.seed },
        ...(flags.penalties ? { penalties: flags.penalties } : {}),
      });
      // The cost model's calibration first (a sized strategy; else nothing to do): the run's
      // time is then decoding only, and the calibration's is reported beside it.
      const { seconds: prepareSeconds } = await dec.prepare();
      const res = await dec.generateBatch(prompts, {
        maxNewTokens: flags.maxNewTokens,
        ...(flags.ignoreEos === true ? { ignoreEos: true } : {}),
        ...(flags.logprobs !== undefined ? { logprobs: flags.logprobs } : {}),
        ...(flags.promptLogprobs !== undefined ? { promptLogprobs: flags.promptLogprobs } : {}),
        ...(flags.minTokens !== undefined ? { minTokens: flags.minTokens } : {}),
        ...(grammar ? { grammar } : {}),
        ...(onTokens ? { onTokens } : {}),
        ...(signal ? { signal } : {}),
      });
      return res.map(
        (r, i): GenerateRecord => ({
          tokens: Array.from(r.tokens),
          text: decode(r.tokens),
          finishReason: r.finishReason,
          stats: {
            targetForwards: r.stats.targetForwards,
            tokensPerForward: r.stats.tokensPerForward,
            acceptanceRate: r.stats.acceptanceRate,
            acceptedPerPosition: r.stats.acceptedPerPosition,
            seconds: r.stats.seconds,
            tokensPerSecond: r.stats.tokensPerSecond,
            nodesPerStep: r.stats.nodesPerStep,
            ...(prepareSeconds > 0 ? { prepareSeconds } : {}),
          },
          ...(r.logprobs ? { logprobs: logprobsRecord(r.logprobs, r.tokens) } : {}),
          ...(r.promptLogprobs ? { promptLogprobs: logprobsRecord(r.promptLogprobs, (prompts[i] as Int32Array).subarray(1)) } : {}),
        }),
      );
    } finally {
      built.dispose();
    }
  };
}
