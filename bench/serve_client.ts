// A minimal HTTP client for the completions server (bench/serve.bench.ts and test/server.test.ts): JSON calls,
// and server-sent-event streams that can be cut off mid-stream like a client going away.
import * as http from 'http';

export interface HttpReply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

export function request(url: string, method: string, body?: string | Buffer): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: body !== undefined ? { 'Content-Type': 'application/json' } : {} }, (res) => {
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

/**
 * POSTs a streaming completion; with cancelAfter, destroys the connection after that many events.
 * onEvent sees each event as it arrives.
 */
export function postStream(url: string, obj: unknown, cancelAfter?: number, onEvent?: (e: Record<string, unknown>) => void): Promise<StreamReply> {
  return new Promise((resolve, reject) => {
    const events: Record<string, unknown>[] = [];
    let buf = '';
    let done = false;
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': 'application/json' } }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (s: string) => {
        buf += s;
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
            return;
          }
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, events, done, cancelled: false }));
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
