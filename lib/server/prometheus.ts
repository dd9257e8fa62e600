// The engine's counters as Prometheus text exposition (format 0.0.4) for GET /metrics.
import type { Engine } from '../engine/engine';
import { STEP_BUCKETS } from '../engine/metrics';

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function prometheusText(engine: Engine): string {
  const m = engine.metrics;
  const out: string[] = [];
  const metric = (name: string, type: 'counter' | 'gauge' | 'histogram', help: string, samples: [string, number][]): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) out.push(`${name}${labels} ${Number.isFinite(v) ? v : 0}`);
  };
  metric('specdec_requests_total', 'counter', 'Requests by outcome (finish reason, aborted, failed).', [
    ['{outcome="stop"}', m.completed.stop],
    ['{outcome="length"}', m.completed.length],
    ['{outcome="context"}', m.completed['context']],
    ['{outcome="aborted"}', m.aborted],
    ['{outcome="failed"}', m.failed],
  ]);
  metric('specdec_prompt_tokens_total', 'counter', 'Prompt tokens submitted.', [['', m.promptTokens]]);
  metric('specdec_shared_prompt_tokens_total', 'counter', 'Prompt tokens taken from another sequence\'s KV cache (live or kept) instead of computed.', [['', m.sharedPromptTokens]]);
  metric('specdec_speculation_off_total', 'counter', 'Requests decoded without drafts: the speculator\'s own KV cache could not hold them alone.', [['', m.speculationOff]]);
  metric('specdec_generation_tokens_total', 'counter', 'Tokens generated.', [['', m.generatedTokens]]);
  metric('specdec_target_forwards_total', 'counter', 'Batched target forwards (prefills, recomputes, speculative steps).', [['', m.forwards]]);
  metric('specdec_tokens_per_forward', 'gauge', 'Completed requests: tokens per target forward of a sequence (tau).', [
    ['', m.sequenceForwards > 0 ? m.completedTokens / m.sequenceForwards : 0],
  ]);
  metric('specdec_draft_tokens_proposed_total', 'counter', 'Completed requests: draft tokens proposed.', [['', m.proposedDrafts]]);
  metric('specdec_draft_tokens_accepted_total', 'counter', 'Completed requests: draft tokens accepted.', [['', m.acceptedDrafts]]);
  metric('specdec_acceptance_rate', 'gauge', 'Completed requests: accepted / proposed draft tokens.', [
    ['', m.proposedDrafts > 0 ? m.acceptedDrafts / m.proposedDrafts : 0],
  ]);
  metric('specdec_queue_depth', 'gauge', 'Requests waiting for admission.', [['', engine.queued]]);
  metric('specdec_running_requests', 'gauge', 'Sequences in the running batch.', [['', engine.batchSize]]);
  metric('specdec_preemptions_total', 'counter', 'Sequences preempted for KV pages (recomputed later).', [['', m.preemptions]]);
  const kv = engine.kvPages();
  if (kv) {
    metric('specdec_kv_pages_used', 'gauge', `Target KV cache pages in use (${kv.pageSize} tokens each).`, [['', kv.totalPages - kv.freePages]]);
    metric('specdec_kv_pages_free', 'gauge', 'Target KV cache pages free.', [['', kv.freePages]]);
  }
  let cum = 0;
  const buckets: [string, number][] = STEP_BUCKETS.map((b, i) => {
    cum += m.stepCounts[i] as number;
    return [`_bucket{le="${b}"}`, cum];
  });
  metric('specdec_step_seconds', 'histogram', 'Latency of one speculative step of a batch.', [
    ...buckets,
    ['_bucket{le="+Inf"}', m.steps],
    ['_sum', m.stepSum],
    ['_count', m.steps],
  ]);
  return out.join('\n') + '\n';
}
