// A minimal HTTP client for the completions server (bench/serve.bench.ts and test/server.test.ts): JSON calls,
// and server-sent-event streams that can be cut off mid-stream like a client going away.
import * as http from 'http';
import { StringDecoder } from 'string_decoder';

export interface HttpReply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

export function request(url: string, method: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: { ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (b: Buffer) => parts.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export async function postJson(url: string, obj: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await request(url, 'POST', JSON.stringify(obj));
  return { status: r.status, json: JSON.parse(r.body) as Record<string, unknown> };
}

export interface StreamReply {
  readonly status: number;
  /** The parsed `data:` events before [DONE]. */
  readonly events: Record<string, unknown>[];
  readonly done: boolean;
  /** The client hung up after `cancelAfter` events. */
  readonly cancelled: boolean;
}

export interface StreamOptions {
  /** Destroy the connection after this many events, like a client going away. */
  readonly cancelAfter?: number;
  /** Sees each event as it arrives (parsed as it arrives). */
  readonly onEvent?: (e: Record<string, unknown>) => void;
  /** Called on every chunk of bytes received (cheap: nothing is parsed). */
  readonly onData?: () => void;
}

/**
 * POSTs a streaming completion. Without cancelAfter or onEvent the events are parsed once the
 * stream has ended: a loopback client shares the server's cores, and parsing each event as it
 * arrives would be the client's cost counted as the server's (bench/serve.bench.ts).
 */
export function postStream(url: string, obj: unknown, opts: StreamOptions = {}): Promise<StreamReply> {
  const { cancelAfter, onEvent, onData } = opts;
  const eager = cancelAfter !== undefined || onEvent !== undefined;
  return new Promise((resolve, reject) => {
    const events: Record<string, unknown>[] = [];
    const raw: Buffer[] = [];
    const utf8 = new StringDecoder('utf8');
    let buf = '';
    let done = false;
    // Parses the complete events in buf; true when the client hung up.
    const parse = (res: http.IncomingMessage): boolean => {
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') done = true;
        else {
          events.push(JSON.parse(data) as Record<string, unknown>);
          onEvent?.(events[events.length - 1] as Record<string, unknown>);
        }
        if (cancelAfter !== undefined && events.length >= cancelAfter && !done) {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, events, done, cancelled: true });
          return true;
        }
      }
      return false;
    };
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': 'application/json' } }, (res) => {
      res.on('data', (b: Buffer) => {
        onData?.();
        if (!eager) {
          raw.push(b);
          return;
        }
        buf += utf8.write(b);  // a character split across chunks waits for its rest
        parse(res);
      });
      res.on('end', () => {
        if (!eager) {
          buf = Buffer.concat(raw).toString('utf8');
          parse(res);
        }
        resolve({ status: res.statusCode ?? 0, events, done, cancelled: false });
      });
      res.on('error', reject);
    });
    req.on('error', (e) => (cancelAfter !== undefined ? undefined : reject(e)));
    req.end(JSON.stringify(obj));
  });
}

/** The token ids of a completion: the reply's choices[0].token_ids, or the stream's chunks joined. */
export function completionTokens(reply: { json: Record<string, unknown> } | StreamReply): number[] {
  const choice = (o: Record<string, unknown>): { token_ids?: number[] } => ((o['choices'] as unknown[] | undefined)?.[0] ?? {}) as { token_ids?: number[] };
  if ('json' in reply) return choice(reply.json).token_ids ?? [];
  return reply.events.flatMap((e) => choice(e).token_ids ?? []);
}
