// Logits processing and sampling at a Llama-3 vocabulary (128256): argmax, processLogits with the
// usual settings (softmax; temperature + top-p; + top-k; min-p), sample(), and the whole per-step
// pipeline processLogits + sample, for 1, 8 and 64 rows (64 = a Medusa tree's rows when sampling).
// A plain JavaScript implementation of argmax, softmax-sampling and top-p sampling runs on the same
// rows in the same process as the reference the native ops are compared with.
// Each row carries its roofline (bench/roofline.ts: bytes per element read + written -- argmax 4,
// processLogits 8, sample 4, processLogits+sample 12 -- over the measured copy bandwidth) and the
// fraction reached; off a GPU, predicted H100/H200 bounds for 32 and 288 rows (batch 32 x 9) follow.
// Penalties: a decoding step's history arrays for the native op (nativePenalties: each history's
// counts kept across steps as it grows) against counting them afresh each step (a sort per history,
// what it did before), and the penalize op on B rows, for B sequences of H-token histories.
// Run: node dist/bench/sampling.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only sampling)
import { argmax, nativePenalties, penalize, processLogits, sample, type PenaltyHistory, type SamplingOptions } from '../lib/sampling';
import { Tensor } from '../lib/tensor';
import { logRow, measureKernel, randomF32, round, standalone, syncTensor, xorshift, type BenchModule, type BenchOptions, type BenchResult, type BenchRow, type Timing } from './common';
import { measureCopyBandwidth, predictionRows, rowOpCost, withRoofline } from './roofline';

/** Bytes per element an op must read + write at least (f32 logits and probs). */
function bytesPerElement(op: string): number {
  if (op.startsWith('processLogits+sample')) return 12;
  if (op.startsWith('processLogits')) return 8;
  return 4; // argmax, sample
}

const VOCAB = 128256;

// ---- the JavaScript reference (straightforward, as an engine author would write it) ---------------

function jsArgmax(x: Float32Array, rows: number, V: number): Int32Array {
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    let bv = -Infinity;
    for (let i = 0, o = r * V; i < V; i++) if ((x[o + i] as number) > bv) ((bv = x[o + i] as number), (best = i));
    out[r] = best;
  }
  return out;
}

/** softmax(x / T) of one row into `p` (float64 sums). */
function jsSoftmax(x: Float32Array, o: number, V: number, T: number, p: Float64Array): void {
  let m = -Infinity;
  for (let i = 0; i < V; i++) m = Math.max(m, x[o + i] as number);
  let s = 0;
  for (let i = 0; i < V; i++) s += p[i] = Math.exp(((x[o + i] as number) - m) / T);
  for (let i = 0; i < V; i++) p[i] = (p[i] as number) / s;
}

function jsSampleSoftmax(x: Float32Array, rows: number, V: number, T: number, u: () => number): Int32Array {
  const out = new Int32Array(rows);
  const p = new Float64Array(V);
  for (let r = 0; r < rows; r++) {
    jsSoftmax(x, r * V, V, T, p);
    let c = 0;
    const t = u();
    let i = 0;
    for (; i < V - 1; i++) if ((c += p[i] as number) > t) break;
    out[r] = i;
  }
  return out;
}

function jsSampleTopP(x: Float32Array, rows: number, V: number, T: number, topP: number, u: () => number): Int32Array {
  const out = new Int32Array(rows);
  const p = new Float64Array(V);
  const idx = new Uint32Array(V);
  for (let r = 0; r < rows; r++) {
    jsSoftmax(x, r * V, V, T, p);
    for (let i = 0; i < V; i++) idx[i] = i;
    idx.sort((a, b) => (p[b] as number) - (p[a] as number) || a - b);
    let kept = 0;
    let mass = 0;
    while (kept < V && mass < topP) mass += p[idx[kept++] as number] as number;
    const t = u() * mass;
    let c = 0;
    let k = 0;
    for (; k < kept - 1; k++) if ((c += p[idx[k] as number] as number) > t) break;
    out[r] = idx[k] as number;
  }
  return out;
}

// ---- the bench ------------------------------------------------------------------------------------

export const samplingBench: BenchModule = {
  name: 'sampling',
  description: 'argmax / processLogits (softmax, top-k, top-p, min-p) / sample at vocab 128256, 1/8/64 rows, vs a plain JS reference',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const V = opts.quick ? 4096 : VOCAB;
    const cuda = opts.device === 'cuda';
    const samples = opts.quick ? 2 : cuda ? 20 : 7;
    const calls = cuda ? 10 : 1;
    const rowCounts = opts.quick ? [1, 2] : [1, 8, 64];
    const settings: { name: string; o: SamplingOptions }[] = [
      { name: 'softmax T=1', o: { temperature: 1 } },
      { name: 'T=0.7 top-p 0.9', o: { temperature: 0.7, topP: 0.9 } },
      { name: 'T=0.7 top-k 50 top-p 0.9', o: { temperature: 0.7, topK: 50, topP: 0.9 } },
      { name: 'T=0.7 min-p 0.05', o: { temperature: 0.7, minP: 0.05 } },
    ];
    const rows: BenchRow[] = [];
    const rand = xorshift(0xc0ffee);
    const peaks = await measureCopyBandwidth(opts.device, opts.quick);
    for (const n of rowCounts) {
      opts.log(`sampling: ${n} rows x ${V}`);
      // Logits of a peaked shape (a few large values over noise), as an LM's are.
      const host = randomF32(n * V, rand, -2, 2);
      for (let r = 0; r < n; r++) for (let k = 0; k < 20; k++) host[r * V + Math.floor(rand() * V)] = 6 + 4 * rand();
      const logits = Tensor.fromArray(host, 'f32', [n, V], opts.device);
      let last: Tensor | undefined;
      // The newest output is kept until the next call (and read back by sync on CUDA).
      const keep = (t: Tensor): void => {
        last?.dispose();
        last = t;
      };
      const sync = (): void => {
        if (last) syncTensor(last);
      };
      // 64 rows on the CPU take up to a second per call: fewer samples there.
      const nSamples = !cuda && n >= 64 ? Math.min(samples, 3) : samples;
      const time = (fn: () => unknown): Promise<Timing> => measureKernel(fn, { warmup: 1, samples: nSamples, calls, sync, device: cuda ? 'cuda' : 'cpu' });
      const push = (name: string, t: Timing, ref?: Timing): void => {
        const us = t.medianMs * 1000;
        rows.push(logRow(opts, withRoofline({
          name: `${name}, ${n} rows`,
          value: round(us, 1),
          unit: 'us/call',
          ...(ref ? { note: `JS reference ${round(ref.medianMs * 1000, 1)} us (native x${round(ref.medianMs / t.medianMs, 2)})` } : {}),
          metrics: { op: name, rows: n, vocab: V, medianUs: us, minUs: t.minMs * 1000, samples: t.samples, ...(ref ? { jsReferenceUs: ref.medianMs * 1000, speedupVsJs: ref.medianMs / t.medianMs } : {}) },
        }, rowOpCost(n, V, bytesPerElement(name)), us, peaks, t.kernel)));
      };
      const jsRows = n <= 8; // the JS reference at 64 rows would only make the bench slow
      // The JS reference's top-p sorts the vocabulary per row (~40 ms a row): a few samples are
      // enough for its ratio (with CUDA's 20 the bench ran past its time box on the first GPU run).
      const jsSamples = Math.min(samples, 5);
      const u = xorshift(99);
      try {
        push('argmax', await time(() => keep(argmax(logits))), jsRows ? await measureKernel(() => jsArgmax(host, n, V), { warmup: 1, samples: jsSamples }) : undefined);
        for (const s of settings) {
          const ref =
            !jsRows ? undefined
            : s.name === 'softmax T=1' ? await measureKernel(() => jsSampleSoftmax(host, n, V, 1, u), { warmup: 1, samples: jsSamples })
            : s.name === 'T=0.7 top-p 0.9' ? await measureKernel(() => jsSampleTopP(host, n, V, 0.7, 0.9, u), { warmup: 1, samples: jsSamples })
            : undefined;
          push(`processLogits ${s.name}`, await time(() => keep(processLogits(logits, s.o))));
          // The whole step: process, then draw one token per row (what the JS reference does).
          let offset = 0n;
          const seeds = new BigUint64Array(n).fill(1n);
          push(
            `processLogits+sample ${s.name}`,
            await time(() => {
              const p = processLogits(logits, s.o);
              sample(p, seeds, new BigUint64Array(n).fill(offset++));
              keep(p);
            }),
            ref,
          );
        }
        const probs = processLogits(logits, { temperature: 1 });
        try {
          let offset = 0n;
          const seeds = new BigUint64Array(n).fill(1n);
          push('sample (probs given)', await measureKernel(() => sample(probs, seeds, new BigUint64Array(n).fill(offset++)), { warmup: 1, samples: nSamples, calls, device: cuda ? 'cuda' : 'cpu' }));
        } finally {
          probs.dispose();
        }
      } finally {
        (last as Tensor | undefined)?.dispose();
        logits.dispose();
      }
    }
    rows.push(...(await penaltyRows(opts, V, cuda)));
    if (!cuda)
      rows.push(...predictionRows('sampling', [32, 288].flatMap((n) => ['argmax', 'processLogits', 'processLogits+sample'].map((op) => ({ name: `${op}, ${n} rows x ${VOCAB}`, cost: rowOpCost(n, VOCAB, bytesPerElement(op)) })))));
    return {
      bench: 'sampling',
      device: opts.device,
      quick: opts.quick,
      setup: { vocab: V, rows: rowCounts, samples, callsPerSample: calls, logits: 'uniform [-2, 2] with 20 peaks in [6, 10] per row', jsReference: 'float64 softmax, inverse-CDF draw; top-p sorts the row (Uint32Array.sort)' },
      rows,
      notes: [
        `roofline: bytes read + written per element / measured copy bandwidth (${round(peaks.bandwidth / 1e9, 1)} GB/s on this ${opts.device})`,
        ...(cuda ? [] : ['PREDICTION rows: bounds on H100/H200 from spec-sheet bandwidth, not measurements']),
      ],
      checks: {},
      seconds: (performance.now() - t0) / 1000,
    };
  },
};

/** The penalties' rows: per-step history arrays (kept counts vs afresh) and the penalize op. */
async function penaltyRows(opts: BenchOptions, V: number, cuda: boolean): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const p = { repetition: 1.2, presence: 0.3, frequency: 0.2 };
  const rand = xorshift(0xbeef);
  const shapes: [number, number][] = opts.quick ? [[1, 200], [2, 200]] : [[1, 2000], [32, 4000]];
  for (const [B, H] of shapes) {
    opts.log(`sampling: penalties, ${B} sequences x ${H}-token histories`);
    // Histories of a text's shape: ids skewed towards a few thousand frequent ones.
    const hist = (): PenaltyHistory & { tokens: number[] } => ({ tokens: Array.from({ length: H }, () => Math.floor(V * rand() ** 3)), promptLength: H >> 1 });
    const kept = Array.from({ length: B }, hist);
    const next = (): number => Math.floor(V * rand() ** 3);
    // A step: one more token per sequence, then its arrays (histories grown in place: counts kept).
    const stepKept = (): unknown => {
      for (const h of kept) h.tokens.push(next());
      return nativePenalties(p, kept);
    };
    // The same with new history arrays each step: every history counted afresh (sorted).
    const fresh = kept.map((h) => ({ tokens: h.tokens.slice(), promptLength: h.promptLength }));
    const stepFresh = (): unknown => {
      fresh.forEach((h, i) => (fresh[i] = { tokens: [...h.tokens, next()], promptLength: h.promptLength }));
      return nativePenalties(p, fresh);
    };
    const samples = opts.quick ? 3 : 15;
    const tk = await measureKernel(stepKept, { warmup: 2, samples });
    const tf = await measureKernel(stepFresh, { warmup: 1, samples: Math.min(samples, 7) });
    rows.push(logRow(opts, {
      name: `penalties' histories a step (nativePenalties, counts kept), ${B} x ${H} tokens`,
      value: round(tk.medianMs * 1000, 1),
      unit: 'us/step',
      note: `counted afresh each step ${round(tf.medianMs * 1000, 1)} us (x${round(tf.medianMs / tk.medianMs, 1)})`,
      metrics: { sequences: B, historyTokens: H, medianUs: tk.medianMs * 1000, freshUs: tf.medianMs * 1000 },
    }));
    // The op: B rows (one per sequence) of a Llama-3 vocabulary.
    const logits = Tensor.fromArray(randomF32(B * V, rand, -2, 2), 'f32', [B, V], opts.device);
    try {
      const rowSeq = Int32Array.from({ length: B }, (_, i) => i);
      const t = await measureKernel(() => penalize(logits, p, kept, rowSeq), { warmup: 2, samples, sync: () => syncTensor(logits), device: cuda ? 'cuda' : 'cpu' });
      rows.push(logRow(opts, {
        name: `penalize (op + histories), ${B} rows x ${V}, ${H}-token histories`,
        value: round(t.medianMs * 1000, 1),
        unit: 'us/call',
        metrics: { rows: B, vocab: V, historyTokens: H, medianUs: t.medianMs * 1000 },
      }));
    } finally {
      logits.dispose();
    }
  }
  return rows;
}

if (require.main === module) void standalone(samplingBench);
