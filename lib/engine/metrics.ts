// Counters of an Engine since it was made (the server exports them as Prometheus metrics).
import type { GenerateResult } from '../decoder';
import type { DecodeStats } from '../spec_engine';

/** Upper bounds (seconds) of the step latency histogram's buckets. */
export const STEP_BUCKETS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export class EngineMetrics {
  submitted = 0;
  /** Finished requests by finish reason. */
  readonly completed: Record<GenerateResult['finishReason'], number> = { stop: 0, length: 0, context: 0 };
  aborted = 0;
  failed = 0;
  promptTokens = 0;
  /** Prompt tokens requests took from another sequence's cache (live or kept) instead of computing them (EngineOptions.prefixSharing). */
  sharedPromptTokens = 0;
  /** Tokens handed to requests (a step's tokens past a stop are not counted). */
  generatedTokens = 0;
  /** Batched target forwards (prefills, recomputes and speculative steps). */
  forwards = 0;
  preemptions = 0;
  /** Requests decoded without drafts because the speculator's own cache could not hold them (DecodeStats.speculationOff). */
  speculationOff = 0;
  /** Of completed requests: their tokens, per-sequence target forwards, drafts proposed and accepted. */
  completedTokens = 0;
  sequenceForwards = 0;
  proposedDrafts = 0;
  acceptedDrafts = 0;
  /** Step latency histogram: counts per STEP_BUCKETS bound (not cumulative), then +Inf. */
  readonly stepCounts: number[] = new Array<number>(STEP_BUCKETS.length + 1).fill(0);
  stepSum = 0;
  steps = 0;

  observeStep(seconds: number): void {
    let i = 0;
    while (i < STEP_BUCKETS.length && seconds > (STEP_BUCKETS[i] as number)) i++;
    this.stepCounts[i] = (this.stepCounts[i] as number) + 1;
    this.stepSum += seconds;
    this.steps++;
  }

  finished(reason: GenerateResult['finishReason'], stats: DecodeStats): void {
    this.completed[reason]++;
    this.completedTokens += stats.newTokens;
    this.sequenceForwards += stats.targetForwards;
    this.proposedDrafts += stats.proposedDraftTokens;
    this.acceptedDrafts += stats.acceptedDraftTokens;
  }
}
