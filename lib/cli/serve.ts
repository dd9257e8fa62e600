// `specdec serve`: loads the target (and the strategy's draft or heads), builds one Engine and
// serves it over HTTP (lib/server/server.ts) until SIGTERM/SIGINT, which drain in-flight requests.
import * as fs from 'fs';
import * as path from 'path';
import { resolveDevice } from '../backend';
import { Engine } from '../engine/engine';
import { readLlamaConfig } from '../models/config';
import { LlamaModel } from '../models/llama';
import { CompletionServer } from '../server/server';
import type { Device } from '../tensor';
import { TextTokenizer } from '../tokenizer';
import { REASONING_FORMATS, type ReasoningFormat } from '../reasoning';
import { TOOL_CALL_FORMATS, type ToolCallFormat } from '../tool_calls';
import { codedError } from '../errors';
import { EMBEDDED, parseIntFlag, parseNumberFlag } from './generate';
import { parseStrategyFlags, speculatorFactory, treeRoomFor, type StrategyFlags } from './strategy_flags';

export const SERVE_USAGE = `usage: specdec serve [--model DIR] [--draft DIR | --medusa DIR | --eagle DIR | --lookahead W,N,G | --prompt-lookup N]
                    [--host 127.0.0.1] [--port 8000] [--max-batch N] [--kv-budget MB] [--prefix-cache N] [--api-key KEY] [--device cpu|cuda|auto]
                    [--tool-call-parser hermes|llama3_json|mistral] [--reasoning-parser deepseek_r1|qwen3]

  OpenAI-compatible HTTP server: POST /v1/completions (stream: true for server-sent events),
  POST /v1/chat/completions, POST /tokenize, POST /detokenize, GET /v1/models, GET /health,
  GET /metrics (Prometheus). SIGTERM or SIGINT drains and exits.

  --model DIR       checkpoint directory (default: the embedded model family)
  --host H          address to listen on (default 127.0.0.1)
  --port P          port (default 8000; 0 picks a free one, printed on stderr)
  --max-batch N     sequences decoded together (default 32); more requests wait in a FIFO queue
  --prefix-cache N  finished sequences kept so that later requests starting with their tokens (a
                    chat's next turn, a shared system prompt) compute only the rest; their pages
                    go first when the cache is short (default --max-batch; 0: none)
  --kv-budget MB    KV cache of the target (and of a draft model) in MiB; default room for
                    --max-batch full contexts, capped at 2 GiB
  --api-key KEY     answer the API routes only with the header Authorization: Bearer KEY (401
                    otherwise; /health and /metrics stay open); default $SPECDEC_API_KEY, else none
  --tool-call-parser F  how chat replies are read for tool calls with tool_choice 'auto' (the
                    default when a request has tools): hermes (<tool_call>{...}</tool_call>: Qwen
                    2.5 / 3, Hermes), llama3_json ({"name", "parameters"}: Llama 3.x) or mistral
                    ([TOOL_CALLS] [{...}] or name[ARGS]{...}); without it 'auto' is refused
                    ('required', a named function and 'none' work)
  --reasoning-parser F  a reasoning model's chat replies split into reasoning_content (its
                    <think> block) and content (deepseek_r1 or qwen3: both read the block alike);
                    response_format, tool calls and tool parsing apply to the answer after it
  --draft/--medusa/--eagle/--lookahead/--prompt-lookup   the speculative strategy (as for generate)`;

export interface ServeFlags {
  readonly model?: string;
  readonly strategy: StrategyFlags;
  readonly host: string;
  readonly port: number;
  readonly maxBatch: number;
  readonly kvBudgetMb?: number;
  /** --prefix-cache (EngineOptions.prefixCache); default maxBatch. */
  readonly prefixCache: number;
  /** --api-key, else $SPECDEC_API_KEY (ServerOptions.apiKey). */
  readonly apiKey?: string;
  /** --tool-call-parser (ServerOptions.toolCallParser). */
  readonly toolCallParser?: ToolCallFormat;
  /** --reasoning-parser (ServerOptions.reasoningParser). */
  readonly reasoningParser?: ReasoningFormat;
  readonly device: Device | 'auto';
}

export function parseServeFlags(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ServeFlags {
  const { flags: strategy, rest } = parseStrategyFlags(argv);
  const values = new Map<string, string>();
  const known = new Set(['--model', '--host', '--port', '--max-batch', '--kv-budget', '--prefix-cache', '--api-key', '--device', '--tool-call-parser', '--reasoning-parser']);
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i] as string;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    if (!known.has(name)) throw codedError('E_ARG', arg.startsWith('-') ? `unknown flag '${name}'` : `unexpected argument '${arg}'`);
    const value = eq > 0 ? arg.slice(eq + 1) : rest[++i];
    if (value === undefined) throw codedError('E_ARG', `${name} needs a value`);
    if (values.has(name)) throw codedError('E_ARG', `${name} given twice`);
    values.set(name, value);
  }
  const device = values.get('--device') ?? 'auto';
  if (device !== 'cpu' && device !== 'cuda' && device !== 'auto') throw codedError('E_ARG', `--device: expected cpu, cuda or auto, got '${device}'`);
  const model = values.get('--model');
  const kv = values.get('--kv-budget');
  const port = values.get('--port');
  const maxBatch = values.get('--max-batch');
  const prefixCache = values.get('--prefix-cache');
  const batch = maxBatch !== undefined ? parseIntFlag('--max-batch', maxBatch, 1) : 32;
  const apiKey = values.get('--api-key') ?? (env['SPECDEC_API_KEY'] || undefined);
  if (apiKey !== undefined && apiKey.trim().length === 0) throw codedError('E_ARG', '--api-key: empty');
  const parser = values.get('--tool-call-parser');
  if (parser !== undefined && !TOOL_CALL_FORMATS.includes(parser as ToolCallFormat)) throw codedError('E_ARG', `--tool-call-parser: expected one of ${TOOL_CALL_FORMATS.join(', ')}, got '${parser}'`);
  const reasoning = values.get('--reasoning-parser');
  if (reasoning !== undefined && !REASONING_FORMATS.includes(reasoning as ReasoningFormat)) throw codedError('E_ARG', `--reasoning-parser: expected one of ${REASONING_FORMATS.join(', ')}, got '${reasoning}'`);
  const f: ServeFlags = {
    strategy,
    host: values.get('--host') ?? '127.0.0.1',
    port: port !== undefined ? parseIntFlag('--port', port, 0) : 8000,
    maxBatch: batch,
    prefixCache: prefixCache !== undefined ? parseIntFlag('--prefix-cache', prefixCache, 0) : batch,
    device,
    ...(model !== undefined ? { model } : {}),
    ...(apiKey !== undefined ? { apiKey } : {}),
    ...(parser !== undefined ? { toolCallParser: parser as ToolCallFormat } : {}),
    ...(reasoning !== undefined ? { reasoningParser: reasoning as ReasoningFormat } : {}),
    ...(kv !== undefined ? { kvBudgetMb: parseNumberFlag('--kv-budget', kv, (n) => n > 0, 'a number of MiB > 0') } : {}),
  };
  if (f.port > 65535) throw codedError('E_ARG', `--port: expected 0..65535, got ${f.port}`);
  return f;
}

/** KV pages of `budgetMb` MiB for the checkpoint in `dir` (the KV dtype LlamaModel.load picks). */
function pagesForBudget(dir: string, device: Device, budgetMb: number, pageSize: number): number {
  const c = readLlamaConfig(dir);
  const half = device !== 'cpu' && (c.torchDtype === 'bfloat16' || c.torchDtype === 'float16');
  const pageBytes = c.numLayers * 2 * pageSize * c.numKvHeads * c.headDim * (half ? 2 : 4);
  const pages = Math.floor((budgetMb * 2 ** 20) / pageBytes);
  if (pages < 1) throw codedError('E_ARG', `--kv-budget: ${budgetMb} MiB holds no KV page of ${pageBytes} bytes for ${dir}`);
  return pages;
}

export interface RunningServer {
  readonly server: CompletionServer;
  readonly url: string;
  /** Drains, closes the server and frees the models. */
  close(): Promise<void>;
}

/** Loads the models of `flags` and starts listening. */
export async function startServe(flags: ServeFlags): Promise<RunningServer> {
  const dir = flags.model === undefined || flags.model === 'default' ? EMBEDDED.target : flags.model;
  if (!fs.existsSync(dir)) throw codedError('E_ARG', `--model: ${dir} does not exist`);
  const device = resolveDevice(flags.device);
  const pageSize = 16;
  // The KV room each sequence keeps for its trees: the engine's reserve, and the caches' spare room.
  const treeTokens = treeRoomFor(flags.strategy, readLlamaConfig(dir).maxPositions);
  const sizing = (d: string): { kvPages: number } | { maxSequences: number; treeTokens: number } =>
    flags.kvBudgetMb !== undefined ? { kvPages: pagesForBudget(d, device, flags.kvBudgetMb, pageSize) } : { maxSequences: flags.maxBatch, treeTokens };
  const model = await LlamaModel.load(dir, { device, pageSize, ...sizing(dir) });
  let dispose = (): void => model.dispose();
  try {
    const built = await speculatorFactory(flags.strategy, {
      treeTokens,
      defaults: { draft: EMBEDDED.draft, medusa: EMBEDDED.medusa, eagle: EMBEDDED.eagle, eagle3: EMBEDDED.eagle3 },
      // A draft model holds the same tokens as the target: the same number of pages.
      loadModel: (d) => LlamaModel.load(d, { device, pageSize, kvPages: model.kvInfo().totalPages }),
    })(model);
    dispose = () => {
      built.dispose();
      model.dispose();
    };
    const engine = new Engine({ model, maxBatch: flags.maxBatch, prefixCache: flags.prefixCache, ...(built.speculator ? { speculator: built.speculator, treeReserveTokens: treeTokens } : {}) });
    // The cost model's calibration before the first request rather than during it.
    await engine.prepare();
    const tokenizer = TextTokenizer.load(dir);
    const name = dir === EMBEDDED.target ? 'specdec-default' : path.basename(path.resolve(dir));
    const server = new CompletionServer({ engine, modelName: name, ...(tokenizer ? { tokenizer } : {}), ...(tokenizer?.hasChatTemplate ? { chat: tokenizer } : {}), ...(flags.apiKey !== undefined ? { apiKey: flags.apiKey } : {}), ...(flags.toolCallParser ? { toolCallParser: flags.toolCallParser } : {}), ...(flags.reasoningParser ? { reasoningParser: flags.reasoningParser } : {}) });
    const addr = await server.listen(flags.port, flags.host);
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    const d = dispose;
    return {
      server,
      url: `http://${host}:${addr.port}`,
      close: async () => {
        await server.close();
        d();
      },
    };
  } catch (e) {
    dispose();
    throw e;
  }
}

export async function serveCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(SERVE_USAGE + '\n');
    return 0;
  }
  const running = await startServe(parseServeFlags(argv));
  process.stderr.write(`specdec serve: listening on ${running.url} (model ${running.server.engine.model.config.architecture}, max batch ${running.server.engine.maxBatch})\n`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      process.stderr.write(`specdec serve: ${sig}: draining ${running.server.engine.batchSize + running.server.engine.queued} request(s)\n`);
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      running.close().then(resolve, resolve);
    };
    const onTerm = (): void => stop('SIGTERM');
    const onInt = (): void => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
  });
  process.stderr.write('specdec serve: stopped\n');
  return 0;
}
