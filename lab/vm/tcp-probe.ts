// A TCP connection held open through a migration, from inside a namespace:
//
//   node --import tsx lab/vm/tcp-probe.ts --to 198.51.100.123:7 [--interval-ms 10] [--duration-ms 0]
//
// Connects to an echo service (the lab guest's port 7), writes one numbered line every interval and reads the
// echoes back. Prints {"event":"connected",...} once connected, then on SIGTERM/SIGINT, on the end of
// --duration-ms, or when the connection ends, one summary line: lines sent and echoed, echoes in order,
// the error code if any (ECONNRESET is what a broken migration looks like), whether the peer closed, and
// the echo times (ms since the epoch: first, last, largest gap between two echoes and when it began).
import net from 'node:net';

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const to = arg('--to');
if (!to || !/^[\d.]+:\d+$/.test(to)) {
  process.stderr.write('usage: tcp-probe.ts --to ADDR:PORT [--interval-ms 10] [--duration-ms 0]\n');
  process.exit(2);
}
const [host, portText] = to.split(':');
const intervalMs = Number(arg('--interval-ms', '10'));
const durationMs = Number(arg('--duration-ms', '0'));

const s = {
  connected: false,
  connectedAtMs: 0,
  sent: 0,
  echoed: 0,
  inOrder: true,
  error: null as string | null,
  peerClosed: false,
  firstEchoAtMs: 0,
  lastEchoAtMs: 0,
  maxEchoGapMs: 0,
  maxEchoGapFromMs: 0,
};
let buffer = '';
let timer: NodeJS.Timeout | null = null;
let done = false;

const sock = net.connect({ host, port: Number(portText) });
sock.setNoDelay(true);
sock.setEncoding('utf8');
sock.on('connect', () => {
  s.connected = true;
  s.connectedAtMs = Date.now();
  process.stdout.write(`${JSON.stringify({ event: 'connected', atMs: s.connectedAtMs })}\n`);
  timer = setInterval(() => {
    sock.write(`${s.sent++}\n`);
  }, intervalMs);
  if (durationMs > 0) setTimeout(() => finish(), durationMs);
});
sock.on('data', (d: string) => {
  buffer += d;
  for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
    const n = Number(buffer.slice(0, nl));
    buffer = buffer.slice(nl + 1);
    if (n !== s.echoed) s.inOrder = false;
    s.echoed++;
    const now = Date.now();
    if (s.lastEchoAtMs && now - s.lastEchoAtMs > s.maxEchoGapMs) {
      s.maxEchoGapMs = now - s.lastEchoAtMs;
      s.maxEchoGapFromMs = s.lastEchoAtMs;
    }
    if (!s.firstEchoAtMs) s.firstEchoAtMs = now;
    s.lastEchoAtMs = now;
  }
});
sock.on('error', (err: NodeJS.ErrnoException) => {
  s.error = err.code ?? err.message;
  finish();
});
sock.on('end', () => {
  s.peerClosed = true;
  finish();
});
sock.on('close', () => finish());
process.on('SIGTERM', () => finish());
process.on('SIGINT', () => finish());

function finish(): void {
  if (done) return;
  done = true;
  if (timer) clearInterval(timer);
  process.stdout.write(`${JSON.stringify({ event: 'summary', ...s })}\n`, () => {
    sock.destroy();
    process.exit(0);
  });
}
