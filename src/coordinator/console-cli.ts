// `homewire vm console NAME`: the VM's serial console in this terminal, through the coordinator (console.ts).
// The terminal is raw while attached (every key goes to the guest, Ctrl-C included); Ctrl-] detaches. Output
// is written as it comes; the coordinator's notices (the VM moved, stopped, ...) go to stderr on lines of
// their own. With several coordinators (--coordinator A,B) the first that accepts the upgrade is used.
import type { Readable, Writable } from 'node:stream';
import WebSocket from 'ws';
import { OperatorError } from '../errors.ts';
import type { CoordinatorClient } from './client.ts';

/** Ctrl-] (GS), as telnet and virsh console use it. */
export const DETACH_BYTE = 0x1d;

export interface ConsoleIo {
  stdin: Readable & { isTTY?: boolean; setRawMode?(raw: boolean): unknown };
  stdout: Writable;
  stderr: Writable;
}

export async function attachConsole(
  client: CoordinatorClient,
  name: string,
  io: ConsoleIo = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr },
): Promise<void> {
  let last: Error | null = null;
  for (const base of client.urls) {
    try {
      const { ws, early } = await open(
        `${base.replace(/^http/, 'ws')}/v1/vms/${encodeURIComponent(name)}/console`,
        client,
      );
      return await session(ws, early, name, io);
    } catch (err) {
      if (err instanceof OperatorError && err.code !== 'unreachable' && err.code !== 'no_leader') throw err;
      last = err as Error;
    }
  }
  throw last ?? new OperatorError('unreachable', 'no coordinator to attach to');
}

type Message = [data: Buffer, isBinary: boolean];

/** The open WebSocket, and what arrived with the handshake (before anyone could listen: the scrollback). */
function open(url: string, client: CoordinatorClient): Promise<{ ws: WebSocket; early: Message[] }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ...client.wsOptions(), perMessageDeflate: false, handshakeTimeout: 10_000 });
    const early: Message[] = [];
    ws.on('message', (data: Buffer, isBinary: boolean) => early.push([data, isBinary]));
    ws.once('open', () => {
      ws.removeAllListeners('error');
      resolve({ ws, early });
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => {
        let e: { code?: string; message?: string } | undefined;
        try {
          e = (JSON.parse(body) as { error?: { code?: string; message?: string } }).error;
        } catch {
          /* not JSON */
        }
        ws.terminate();
        reject(
          new OperatorError(e?.code ?? `http_${res.statusCode}`, e?.message ?? `HTTP ${res.statusCode} from ${url}`),
        );
      });
    });
    ws.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        new OperatorError(
          'unreachable',
          `cannot reach the coordinator at ${url} (${err.code ?? err.message}): is \`homewire coordinator\` running there?`,
        ),
      );
    });
  });
}

function session(ws: WebSocket, early: Message[], name: string, io: ConsoleIo): Promise<void> {
  return new Promise((resolve, reject) => {
    const raw = io.stdin.isTTY === true && typeof io.stdin.setRawMode === 'function';
    let detached = false;
    const note = (text: string) => io.stderr.write(`\r\n[homewire: ${text}]\r\n`);
    if (raw) io.stdin.setRawMode!(true);
    note(`attached to the console of vm ${name}; Ctrl-] detaches`);
    const onData = (chunk: Buffer) => {
      const i = chunk.indexOf(DETACH_BYTE);
      const keys = i >= 0 ? chunk.subarray(0, i) : chunk;
      if (keys.length && ws.readyState === WebSocket.OPEN) ws.send(keys, { binary: true });
      if (i >= 0) detach();
    };
    const detach = () => {
      if (detached) return;
      detached = true;
      ws.close(1000, 'detached');
      setTimeout(() => ws.terminate(), 1000).unref();
    };
    const done = () => {
      io.stdin.off('data', onData);
      io.stdin.off('end', detach);
      if (raw) io.stdin.setRawMode!(false);
      io.stdin.pause();
    };
    io.stdin.on('data', onData);
    io.stdin.on('end', detach);
    io.stdin.resume();
    const onMessage = (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        io.stdout.write(data);
        return;
      }
      try {
        const m = JSON.parse(data.toString('utf8')) as { message?: string };
        if (m.message) note(m.message);
      } catch {
        /* not a notice */
      }
    };
    ws.removeAllListeners('message');
    for (const [data, isBinary] of early) onMessage(data, isBinary);
    ws.on('message', onMessage);
    ws.on('error', () => {}); // 'close' follows
    ws.on('close', (code: number, reason: Buffer) => {
      done();
      if (detached) {
        note('detached');
        return resolve();
      }
      const why = reason.toString('utf8') || `code ${code}`;
      reject(new OperatorError('ECONSOLE', `the console of vm ${name} closed: ${why}`));
    });
  });
}
