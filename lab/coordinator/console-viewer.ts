// A console viewer for the tests: the real `homewire vm console NAME` in the grid's underlay namespace (where
// the coordinator listens), stdin and stdout on pipes. Output is kept as text (latin1: one char per byte).
//
//   const v = await ConsoleViewer.attach(grid, 'web');       // resolves once the CLI says it is attached
//   v.type('echo hi\r'); await v.waitFor(/\nhi\r/, 1000);      // → { match, ms }
//   await v.detach();                                         // Ctrl-], then the CLI exits 0
// With tty: true the CLI runs on a pseudo-terminal (util-linux `script`), as in a real terminal: it must switch
// it to raw mode (or Ctrl-C would end it instead of reaching the guest); its notices then share stdout.
import type { ChildProcess } from 'node:child_process';
import { DETACH_BYTE } from '../../src/coordinator/console-cli.ts';
import { sleep } from '../run.ts';
import { CLI, type GridLab, LAB_COORDINATOR } from './grid.ts';

export class ConsoleViewer {
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;

  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    proc.stdout!.setEncoding('latin1').on('data', (d: string) => {
      this.stdout += d;
    });
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
    });
    proc.stdin!.on('error', () => {});
    this.exited = new Promise((r) => proc.once('exit', (code) => r(code)));
  }

  /** Starts the CLI; resolves once it is attached (or rejects with what it said). */
  static async attach(grid: GridLab, vm: string, o: { tokenFile?: string; timeoutMs?: number; tty?: boolean } = {}) {
    const argv = [
      ...CLI,
      'vm',
      'console',
      vm,
      '--coordinator',
      LAB_COORDINATOR,
      '--token-file',
      o.tokenFile ?? grid.adminTokenFile,
    ];
    const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    const proc = grid.lab.spawn('ul', o.tty ? ['script', '-qfec', quoted, '/dev/null'] : argv, { stdio: 'pipe' });
    const v = new ConsoleViewer(vm, proc);
    const deadline = Date.now() + (o.timeoutMs ?? 20_000);
    let code: number | null | undefined;
    v.exited.then((c) => {
      code = c;
    });
    while (!/attached to the console/.test(o.tty ? v.stdout : v.stderr)) {
      if (code !== undefined) throw new Error(`vm console ${vm} exited ${code}: ${v.stderr.trim()}`);
      if (Date.now() > deadline) throw new Error(`vm console ${vm} did not attach: ${v.stderr.trim()}`);
      await sleep(20);
    }
    return v;
  }

  /** The CLI run to its end (for refusals): exit code and what it printed. */
  static async refused(grid: GridLab, vm: string, tokenFile: string): Promise<{ code: number | null; stderr: string }> {
    const proc = grid.lab.spawn(
      'ul',
      [...CLI, 'vm', 'console', vm, '--coordinator', LAB_COORDINATOR, '--token-file', tokenFile],
      { stdio: 'pipe' },
    );
    const v = new ConsoleViewer(vm, proc);
    const code = await v.exited;
    return { code, stderr: v.stderr };
  }

  type(text: string): void {
    this.proc.stdin!.write(Buffer.from(text, 'latin1'));
  }

  /** Waits until stdout (from offset `from`) matches re; how long it took. */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<{ match: RegExpExecArray; ms: number }> {
    const started = Date.now();
    for (;;) {
      const m = re.exec(this.stdout.slice(from));
      if (m) return { match: m, ms: Date.now() - started };
      if (Date.now() - started > timeoutMs)
        throw new Error(
          `console viewer of ${this.name}: ${re} not seen within ${timeoutMs} ms; last output: ${JSON.stringify(this.stdout.slice(-300))}; stderr: ${this.stderr.trim()}`,
        );
      await sleep(5);
    }
  }

  /** Ctrl-]: the CLI detaches and exits; its exit code. */
  async detach(): Promise<number | null> {
    this.proc.stdin!.write(Buffer.from([DETACH_BYTE]));
    return Promise.race([this.exited, sleep(10_000).then(() => -1)]);
  }
}
