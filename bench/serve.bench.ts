// Serving: continuous batching and `specdec serve` on a random ~100M bf16 Llama (bench/common.ts).
// 1. Scaling: total tokens/s of 1 vs 8 concurrent greedy streams through the in-process Engine, and
//    the same 8 streams through the HTTP server on loopback (SSE): the server's overhead. Runs
//    alternate engine / server so that a shared machine's noise hits both alike; medians reported.
// 2. Load: 64 loopback clients, mixed prompt and output lengths, mixed sampling settings, 10% hung
//    up mid-stream; 0 errors, every completed response equal to the same request sent alone, all KV
//    pages free at the end.
// 3. Soak: the load repeated for a few minutes; RSS and KV pages sampled; no growth.
// Run: node dist/bench/serve.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only serve)
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { CompletionServer } from '../lib/server/server';
import { LLAMA_100M, median, round, standalone, tempDir, writeRandomLlama, type BenchModule, type BenchOptions, type BenchResult, type BenchRow, type RandomLlamaSpec } from './common';
import { completionTokens, postStream } from './serve_client';
import { runLoad, type LoadOptions } from './serve_load';

const QUICK_MODEL: RandomLlamaSpec = { vocab: 512, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2 };

export const serveBench: BenchModule = {
  name: 'serve',
  description: 'continuous batching: 1 vs 8 streams (engine and HTTP server), 64-client loopback load test and soak',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const spec = opts.quick ? QUICK_MODEL : LLAMA_100M;
    // Long enough that the 8 prompts' prefill (compute-bound: 8x one prompt's) is not most of the run.
    const newTokens = opts.quick ? 8 : 128;
    const repeats = opts.quick ? 1 : 3;
    const soakSeconds = opts.quick ? 3 : Number(process.env['SPECDEC_SOAK_SECONDS'] ?? 180);
    const tmp = tempDir('serve');
    const rows: BenchRow[] = [];
    const checks: Record<string, boolean> = {};
    const notes: string[] = [];
    try {
      opts.log(`serve: writing a random ${spec.hidden}x${spec.layers} model`);
      const params = writeRandomLlama(tmp.dir, spec, 0x51ed);
      // 64 sequences of up to 64 + 64 tokens plus a 64-token tree reserve each.
      const model = await LlamaModel.load(tmp.dir, { device: opts.device, pageSize: 16, kvPages: 64 * 12 + 16 });
      const engine = new Engine({ model, maxBatch: 64 });
      const server = new CompletionServer({ engine, modelName: 'random-100m' });
      const addr = await server.listen(0, '127.0.0.1');
      const url = `http://127.0.0.1:${addr.port}`;
      try {
        // ---- 1. scaling ----
        const prompts = Array.from({ length: 8 }, (_, b) => Array.from({ length: 16 }, (_, i) => (i * 7919 + b * 104729) % spec.vocab));
        // Each run gives end-to-end tokens/s (prompt forwards included) and the decode phase's:
        // tokens after each stream's first / time from the last stream's first token to the end.
        interface Rate {
          readonly total: number;
          readonly decode: number;
        }
        const rate = (t: number, firsts: number[], tokens: number, n: number): Rate => {
          const end = performance.now();
          return { total: tokens / ((end - t) / 1000), decode: (tokens - n) / ((end - Math.max(...firsts)) / 1000) };
        };
        const viaEngine = async (n: number): Promise<Rate> => {
          const t = performance.now();
          const firsts: number[] = [];
          const res = await Promise.all(
            prompts.slice(0, n).map((p, i) => engine.submit(p, { maxNewTokens: newTokens, stopTokens: [], onTokens: () => void (firsts[i] ??= performance.now()) })),
          );
          return rate(t, firsts, res.reduce((s, r) => s + r.tokens.length, 0), n);
        };
        const viaServer = async (n: number): Promise<Rate> => {
          const t = performance.now();
          const firsts: number[] = [];
          const res = await Promise.all(
            prompts.slice(0, n).map((p, i) =>
              postStream(`${url}/v1/completions`, { prompt: p, max_tokens: newTokens, temperature: 0, stream: true, stop_token_ids: [] }, { onData: () => void (firsts[i] ??= performance.now()) }),
            ),
          );
          return rate(t, firsts, res.reduce((s, r) => s + completionTokens(r).length, 0), n);
        };
        // The kernels' own batch scaling: plainGenerate over the same prompts, batch 1 and 8.
        const viaPlain = async (n: number): Promise<number> => {
          const res = await plainGenerate(model, prompts.slice(0, n).map((p) => Int32Array.from(p)), { maxNewTokens: newTokens, stopTokens: [] });
          return res.stats.tokensPerSecond;
        };
        await viaEngine(8); // warm-up
        const one: Rate[] = [];
        const eight: Rate[] = [];
        const http8: Rate[] = [];
        const plain1: number[] = [];
        const plain8: number[] = [];
        for (let r = 0; r < repeats; r++) {
          opts.log(`serve: scaling run ${r + 1}/${repeats}`);
          plain1.push(await viaPlain(1));
          one.push(await viaEngine(1));
          eight.push(await viaEngine(8));
          http8.push(await viaServer(8));
          plain8.push(await viaPlain(8));
        }
        // The overhead is a few percent and rounds on a shared VM spread by +-10%: more rounds of
        // just the pair, alternating which runs first, and the median of each round's ratio.
        const pairs = opts.quick ? 1 : 10;
        const pairRatio: number[] = [];
        const pairRatioDecode: number[] = [];
        for (let r = 0; r < pairs; r++) {
          opts.log(`serve: engine vs server, round ${r + 1}/${pairs}`);
          let e: Rate, h: Rate;
          if (r % 2 === 0) {
            e = await viaEngine(8);
            h = await viaServer(8);
          } else {
            h = await viaServer(8);
            e = await viaEngine(8);
          }
          pairRatio.push(h.total / e.total);
          pairRatioDecode.push(h.decode / e.decode);
        }
        // Busy consumers without sockets: onTokens burns 90 us per chunk (8 per step) on the
        // JavaScript thread, with and without a core lent to it (EngineOptions.lendCore), against
        // the same engine with idle consumers; paired rounds, alternating order.
        const burnUs = 90;
        const lendRounds = opts.quick ? 1 : 6;
        const viaBurn = async (lendCore: boolean, us: number): Promise<number> => {
          const e = new Engine({ model, maxBatch: 64, lendCore });
          const burn = (): void => {
            const until = performance.now() + us / 1000;
            while (performance.now() < until);
          };
          const t = performance.now();
          const res = await Promise.all(prompts.map((p) => e.submit(p, { maxNewTokens: newTokens, stopTokens: [], ...(us > 0 ? { onTokens: burn } : {}) })));
          return res.reduce((n, r) => n + r.tokens.length, 0) / ((performance.now() - t) / 1000);
        };
        const burnLoss: { lend: number[]; noLend: number[] } = { lend: [], noLend: [] };
        for (let r = 0; r < lendRounds; r++) {
          opts.log(`serve: busy consumers, lend vs no lend, round ${r + 1}/${lendRounds}`);
          for (const lend of r % 2 === 0 ? [false, true] : [true, false]) {
            const idle = await viaBurn(lend, 0);
            const busy = await viaBurn(lend, burnUs);
            (lend ? burnLoss.lend : burnLoss.noLend).push(1 - busy / idle);
          }
        }
        const tot = (rs: Rate[]): number => median(rs.map((r) => r.total));
        const dec = (rs: Rate[]): number => median(rs.map((r) => r.decode));
        const scale = tot(eight) / tot(one);
        const scaleDecode = dec(eight) / dec(one);
        const overhead = 1 - median(pairRatio);
        const overheadDecode = 1 - median(pairRatioDecode);
        const runs = (rs: Rate[]): Record<string, number[]> => ({ runs: rs.map((r) => r.total), decodeRuns: rs.map((r) => r.decode) });
        rows.push({ name: 'engine, 1 stream', value: round(tot(one), 1), unit: 'tok/s', note: `decode phase ${round(dec(one), 1)} tok/s`, metrics: runs(one) });
        rows.push({
          name: 'engine, 8 streams',
          value: round(tot(eight), 1),
          unit: 'tok/s',
          note: `x${round(scale, 2)} of 1 stream; decode phase ${round(dec(eight), 1)} tok/s, x${round(scaleDecode, 2)}`,
          metrics: { ...runs(eight), ratio: scale, decodeRatio: scaleDecode },
        });
        rows.push({
          name: 'server, 8 streams (SSE)',
          value: round(tot(http8), 1),
          unit: 'tok/s',
          note: `overhead ${round(100 * overhead, 1)}% vs engine (median of ${pairs} paired rounds; ${round(100 * (1 - tot(http8) / tot(eight)), 1)}% from the ${repeats} rounds above); decode phase ${round(dec(http8), 1)} tok/s, overhead ${round(100 * overheadDecode, 1)}%`,
          metrics: { ...runs(http8), overhead, overheadDecode, pairRatio, pairRatioDecode },
        });
        rows.push({
          name: `engine, 8 streams, onTokens busy ${burnUs} us per chunk: throughput lost`,
          value: round(100 * median(burnLoss.lend), 1),
          unit: '%',
          note: `with a core lent to the consumers (the default); ${round(100 * median(burnLoss.noLend), 1)}% without (lendCore: false); the consumers take ${8 * burnUs} us per step; medians of ${lendRounds} paired rounds`,
          metrics: burnLoss,
        });
        rows.push({ name: 'plainGenerate, batch 1', value: round(median(plain1), 1), unit: 'tok/s', note: `engine 1 stream at x${round(tot(one) / median(plain1), 2)} of it`, metrics: { runs: plain1 } });
        rows.push({ name: 'plainGenerate, batch 8', value: round(median(plain8), 1), unit: 'tok/s', note: `x${round(median(plain8) / median(plain1), 2)} of batch 1 (the kernels' scaling)`, metrics: { runs: plain8 } });
        notes.push(`goals: 8 streams >= 4x one stream (measured x${round(scale, 2)} end to end, x${round(scaleDecode, 2)} in the decode phase); server overhead < 5% (measured ${round(100 * overhead, 1)}% end to end, ${round(100 * overheadDecode, 1)}% in the decode phase)`);

        // ---- 2. load ----
        const load: LoadOptions = {
          url,
          clients: opts.quick ? 8 : 64,
          requestsPerClient: 1,
          vocab: spec.vocab,
          promptLen: [1, 64],
          maxTokens: [1, 64],
          cancelFraction: 0.1,
          seed: 11,
          deadlineMs: 600000,
        };
        opts.log(`serve: load test, ${load.clients} clients (then each completed request again alone)`);
        const rep = await runLoad(load);
        await engine.idle();
        const kv = model.kvInfo();
        checks['load: 0 errors'] = rep.errors.length === 0;
        checks['load: each completion equals the request alone'] = rep.mismatches === 0;
        checks['load: all KV pages free'] = kv.freePages === kv.totalPages;
        rows.push({
          name: `load, ${load.clients} clients`,
          value: round(rep.completionTokens / rep.seconds, 1),
          unit: 'tok/s',
          note: `${rep.completed} completed, ${rep.cancelled} cancelled, ${rep.errors.length} errors, ${rep.mismatches} differ from alone`,
          metrics: { ...rep, errors: rep.errors.slice(0, 5), preemptions: engine.metrics.preemptions },
        });

        // ---- 3. soak ----
        opts.log(`serve: soak, ${soakSeconds} s`);
        const samples: { t: number; rssMb: number; pagesUsed: number }[] = [];
        const sample = (): void => {
          const k = model.kvInfo();
          samples.push({ t: round((performance.now() - t0) / 1000, 1), rssMb: round(process.memoryUsage().rss / 2 ** 20, 1), pagesUsed: k.totalPages - k.freePages });
        };
        const timer = setInterval(sample, 2000);
        const soakEnd = performance.now() + soakSeconds * 1000;
        let rounds = 0;
        const soakErrors: string[] = [];
        let soakTokens = 0;
        const soakT0 = performance.now();
        while (performance.now() < soakEnd) {
          const r = await runLoad({ ...load, seed: 100 + rounds, checkAlone: false, deadlineMs: 600000 });
          soakErrors.push(...r.errors);
          soakTokens += r.completionTokens;
          rounds++;
          if (rounds === 1) global.gc?.();
        }
        clearInterval(timer);
        await engine.idle();
        sample();
        const k2 = model.kvInfo();
        // RSS after the first quarter (allocator warm) vs at the end.
        const early = samples[Math.floor(samples.length / 4)]?.rssMb ?? 0;
        const last = samples[samples.length - 1]?.rssMb ?? 0;
        checks['soak: 0 errors'] = soakErrors.length === 0;
        checks['soak: all KV pages free at the end'] = k2.freePages === k2.totalPages;
        checks['soak: RSS grew < 10% after warm-up'] = last <= early * 1.1;
        rows.push({
          name: `soak, ${soakSeconds} s`,
          value: round(soakTokens / ((performance.now() - soakT0) / 1000), 1),
          unit: 'tok/s',
          note: `${rounds} rounds, RSS ${early} -> ${last} MB, ${soakErrors.length} errors`,
          metrics: { rounds, errors: soakErrors.slice(0, 5), samples },
        });
      } finally {
        await server.close();
        model.dispose();
      }
      return {
        bench: 'serve',
        device: opts.device,
        quick: opts.quick,
        setup: { model: { params, dtype: 'bf16', ...spec }, weights: 'random', speculator: 'none', newTokens, repeats, soakSeconds },
        rows,
        notes,
        checks,
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      tmp.remove();
    }
  },
};

if (require.main === module) void standalone(serveBench);
