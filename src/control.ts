/**
 * The operator channel: how `upgrader upgrade` and `upgrader rollback` reach the running upgrader.
 *
 * A Unix stream socket at <root>/state/control/sock, in a directory of mode 0700: only the root's
 * owner (the user the upgrader runs as) and root can reach it; anyone else gets EACCES from the kernel
 * before a byte is exchanged. One JSON object per line, like the agent protocol; docs/protocol.md has
 * the full description. In the order they are sent:
 *   request  {"type":"upgrade","version":"2.0.0","force":false,"until":"succeeded"} or {"type":"rollback",...}
 *   replies  {"type":"accepted","version":"2.0.0"}, {"type":"step","text":"..."}*, then (unless `until` is
 *            "accepted") {"type":"succeeded","version":"2.0.0","probation":true} and (with `until`
 *            "probation") {"type":"passed","version":"2.0.0"}; or, at any point, {"type":"failed",
 *            "version":"2.0.0","reason":"...","code":"quarantined"}, which ends the conversation.
 *   request  {"type":"halt","by":"alice"} -> {"type":"halted","version":"1.0.0","since":"..."} once the agent has exited
 *   request  {"type":"resume"}            -> {"type":"resumed","version":"1.0.0"} once `current` is started again
 *            (either may instead get {"type":"failed","version":null,...} with its refusal code).
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { z } from 'zod';
import { LineReader } from './protocol.js';

/** sun_path holds 108 bytes, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

/** How far the operator waits: the handoff accepted, done (the new version works), or past its probation. */
export const WaitUntil = z.enum(['accepted', 'succeeded', 'probation']);
export type WaitUntil = z.infer<typeof WaitUntil>;

// `wait: false` is the first version's spelling of `until: "accepted"`, still understood.
const requestOptions = { force: z.boolean().default(false), wait: z.boolean().default(true), until: WaitUntil.optional() };
export const ControlRequest = z.discriminatedUnion('type', [
  z.object({ type: z.literal('upgrade'), version: z.string().max(256), ...requestOptions }),
  z.object({ type: z.literal('rollback'), ...requestOptions }),
  /** `by`: who asks, shown by status (a user, or a fleet rollout). */
  z.object({ type: z.literal('halt'), by: z.string().min(1).max(256) }),
  z.object({ type: z.literal('resume') }),
]);
export type ControlRequest = z.infer<typeof ControlRequest>;

export const ControlReply = z.discriminatedUnion('type', [
  z.object({ type: z.literal('step'), text: z.string() }),
  z.object({ type: z.literal('accepted'), version: z.string() }),
  z.object({ type: z.literal('succeeded'), version: z.string(), probation: z.boolean().optional() }),
  z.object({ type: z.literal('passed'), version: z.string() }),
  z.object({ type: z.literal('halted'), version: z.string(), since: z.string() }),
  z.object({ type: z.literal('resumed'), version: z.string() }),
  z.object({ type: z.literal('failed'), version: z.string().nullable(), reason: z.string(), code: z.string().regex(/^[a-z][a-z-]{0,31}$/).optional() }),
]);
export type ControlReply = z.infer<typeof ControlReply>;

export function controlSocketPath(stateDir: string): string {
  return join(stateDir, 'control', 'sock');
}

export type Replier = { send: (reply: ControlReply) => void; end: () => void; onClose: (listener: () => void) => void };

/** Listens on the control socket; each connection's first line is handed to `onRequest`. */
export class ControlServer {
  private server: Server | null = null;

  constructor(
    private readonly stateDir: string,
    private readonly onRequest: (request: ControlRequest, replier: Replier) => void,
  ) {}

  /** Starts listening; returns why it could not (the channel is then off), or null. */
  listen(): Promise<string | null> {
    const path = controlSocketPath(this.stateDir);
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) return Promise.resolve(`the socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes`);
    try {
      mkdirSync(join(this.stateDir, 'control'), { recursive: true, mode: 0o700 });
      chmodSync(join(this.stateDir, 'control'), 0o700);
      rmSync(path, { force: true });
    } catch (error) {
      return Promise.resolve(`the control directory cannot be prepared (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    }
    return new Promise((resolve) => {
      const server = createServer((socket) => this.accept(socket));
      server.once('error', (error) => resolve(`cannot listen on ${path} (${(error as NodeJS.ErrnoException).code ?? error.message})`));
      server.listen(path, () => {
        this.server = server;
        resolve(null);
      });
    });
  }

  close(unlink = true): void {
    this.server?.close();
    this.server = null;
    if (unlink) rmSync(controlSocketPath(this.stateDir), { force: true });
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined);
    const replier: Replier = {
      send: (reply) => {
        if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
      },
      end: () => socket.end(),
      onClose: (listener) => socket.once('close', listener),
    };
    let handled = false;
    const reader = new LineReader((event) => {
      if (handled) return;
      handled = true;
      const parsed = event.kind === 'line' ? safeJson(event.line) : undefined;
      const request = ControlRequest.safeParse(parsed);
      if (!request.success) {
        replier.send({ type: 'failed', version: null, reason: 'the request is not a valid operator request', code: 'invalid-request' });
        replier.end();
        return;
      }
      this.onRequest(request.data, replier);
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
  }
}

function safeJson(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

export type ControlOutcome = { kind: 'reply'; reply: ControlReply } | { kind: 'unreachable'; code: string };

/** Sends one request and calls `onReply` for each reply; resolves with the last one, or why nothing answered (ETIMEDOUT once `signal` aborts). */
export function sendControlRequest(stateDir: string, request: ControlRequest, onReply: (reply: ControlReply) => void, signal?: AbortSignal): Promise<ControlOutcome> {
  return new Promise((resolve) => {
    let last: ControlReply | null = null;
    const socket = createConnection(controlSocketPath(stateDir));
    // A caller that stops waiting (a deadline, a stop) ends the conversation: a stopped upgrader's socket
    // still accepts connections into its backlog, and would otherwise never answer.
    signal?.addEventListener('abort', () => {
      socket.destroy();
      resolve({ kind: 'unreachable', code: 'ETIMEDOUT' });
    }, { once: true });
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('error', (error: NodeJS.ErrnoException) => resolve({ kind: 'unreachable', code: error.code ?? error.message }));
    const reader = new LineReader((event) => {
      if (event.kind !== 'line') return;
      const reply = ControlReply.safeParse(safeJson(event.line));
      if (!reply.success) return;
      last = reply.data;
      onReply(reply.data);
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.on('close', () => resolve(last ? { kind: 'reply', reply: last } : { kind: 'unreachable', code: 'ECONNRESET' }));
  });
}
