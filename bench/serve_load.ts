// Load test of `specdec serve` over loopback: N concurrent clients, each sending a fixed number of
// completions with mixed prompt and output lengths and mixed sampling settings, streamed or not, a
// fraction cancelled mid-stream (the client hangs up). Afterwards every completed request is sent
// again alone and must give the same tokens. Bounded in count and in time (deadlineMs).
import { xorshift } from './common';
import { completionTokens, postJson, postStream } from './serve_client';

export interface LoadOptions {
  /** Server base URL, e.g. http://127.0.0.1:8000 (loopback). */
  readonly url: string;
  readonly clients: number;
  readonly requestsPerClient: number;
  readonly vocab: number;
  readonly promptLen: readonly [number, number];
  readonly maxTokens: readonly [number, number];
  /** Fraction of requests cancelled after their first streamed chunks. */
  readonly cancelFraction: number;
  readonly seed: number;
  /** Requests not finished by then count as errors. */
  readonly deadlineMs: number;
  /** Re-run each completed request alone and compare (default true). */
  readonly checkAlone?: boolean;
}

export interface LoadReport {
  readonly requests: number;
  readonly completed: number;
  readonly cancelled: number;
  readonly errors: string[];
  /** Completed requests whose tokens differ from the same request alone. */
  readonly mismatches: number;
  readonly completionTokens: number;
  /** Wall time of the concurrent phase. */
  readonly seconds: number;
}

interface Job {
  readonly body: Record<string, unknown>;
  readonly cancelAfter?: number;
}

/** The mixed request set (deterministic for a seed). */
export function loadJobs(o: LoadOptions): Job[][] {
  const r = xorshift(o.seed);
  const int = ([lo, hi]: readonly [number, number]): number => lo + Math.floor(r() * (hi - lo + 1));
  const samplings: Record<string, unknown>[] = [
    { temperature: 0 },
    { temperature: 0.8 },
    { temperature: 1, top_p: 0.9 },
    { temperature: 0.7, top_k: 40 },
  ];
  let n = 0;
  return Array.from({ length: o.clients }, () =>
    Array.from({ length: o.requestsPerClient }, () => {
      const i = n++;
      const body = {
        prompt: Array.from({ length: int(o.promptLen) }, () => Math.floor(r() * o.vocab)),
        max_tokens: int(o.maxTokens),
        seed: 7919 * i + 1,
        ...(samplings[i % samplings.length] as Record<string, unknown>),
        stream: r() < 0.5,
      };
      const cancel = r() < o.cancelFraction;
      return cancel ? { body: { ...body, stream: true }, cancelAfter: 2 } : { body };
    }),
  );
}

export async function runLoad(o: LoadOptions): Promise<LoadReport> {
  const jobs = loadJobs(o);
  const url = `${o.url}/v1/completions`;
  const errors: string[] = [];
  const done: { job: Job; tokens: number[] }[] = [];
  let cancelled = 0;
  const deadline = Date.now() + o.deadlineMs;
  const t0 = performance.now();
  await Promise.all(
    jobs.map(async (list, c) => {
      for (const [k, job] of list.entries()) {
        if (Date.now() > deadline) {
          errors.push(`client ${c} request ${k}: not started before the deadline`);
          continue;
        }
        try {
          if (job.body['stream'] === true) {
            const s = await postStream(url, job.body, job.cancelAfter !== undefined ? { cancelAfter: job.cancelAfter } : {});
            if (s.cancelled) cancelled++;
            else if (s.status !== 200 || !s.done || s.events.some((e) => 'error' in e)) errors.push(`client ${c} request ${k}: status ${s.status}, done ${s.done}`);
            else done.push({ job, tokens: completionTokens(s) });
          } else {
            const r = await postJson(url, job.body);
            if (r.status !== 200) errors.push(`client ${c} request ${k}: status ${r.status} ${JSON.stringify(r.json)}`);
            else done.push({ job, tokens: completionTokens(r) });
          }
        } catch (e) {
          errors.push(`client ${c} request ${k}: ${(e as Error).message}`);
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  if (Date.now() > deadline) errors.push(`the load ran past its deadline of ${o.deadlineMs} ms`);
  let mismatches = 0;
  if (o.checkAlone ?? true) {
    for (const d of done) {
      const alone = await postJson(url, { ...d.job.body, stream: false });
      if (alone.status !== 200 || completionTokens(alone).join(',') !== d.tokens.join(',')) mismatches++;
    }
  }
  return {
    requests: jobs.reduce((n, l) => n + l.length, 0),
    completed: done.length,
    cancelled,
    errors,
    mismatches,
    completionTokens: done.reduce((n, d) => n + d.tokens.length, 0),
    seconds,
  };
}
