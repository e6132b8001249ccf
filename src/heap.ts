// Scavenges paced by the data path's memory outside V8's heap.
//
// Two kinds of Buffer carry every packet: each receive batch reaches JS as a Buffer of its own
// (native/udp_rx.cc), and each sealed datagram is a new Buffer (mesh/keypair.ts). Their bytes live outside
// V8's heap, and V8 frees them only when a scavenge finds the Buffer dead. The data path allocates little on
// the JS heap, so under a stream scavenges come seldom while these bytes pile up at line rate: the memory V8
// counts as external reaches its soft limit (64 MB above what the last full collection left) and V8 answers
// with a full mark-compact. On this 2-core machine the receiver ran one every ~0.6 s at 400 Mbit/s of UDP and
// the sender one every ~0.11 s under TCP, 2-14 ms each, and each pause a burst of drops. Asking for a
// scavenge after every YOUNG_GC_AFTER_BYTES of them frees them long before that (0.2-0.5 ms each, a few a
// second at full speed, none at rest). The pace is set by bytes alone, so a flood of garbage at the port costs
// one scavenge per YOUNG_GC_AFTER_BYTES of it, less than the full collections it would otherwise bring.
// HOMEWIRE_YOUNG_GC=0 turns it off (for comparison in bench/).
//
// V8 gives gc() (with { type: 'minor' }) to contexts made after --expose-gc is set; the daemon takes it from a
// fresh vm context once. Where V8 does not give it, nothing is paced and nothing else changes.
import v8 from 'node:v8';
import vm from 'node:vm';
import { YOUNG_GC_AFTER_BYTES } from './constants.ts';

type Collect = (options: { type: 'minor' }) => void;

/** V8's gc() from a fresh context, or null where it is not available. */
function minorCollector(): Collect | null {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc: unknown = vm.runInNewContext('typeof gc === "function" ? gc : null');
    return typeof gc === 'function' ? (gc as Collect) : null;
  } catch {
    return null;
  }
}

class ScavengePacer {
  /** Scavenges asked for so far. */
  scavenges = 0;
  private bytes = 0;

  constructor(
    private readonly collect: Collect | null,
    private readonly afterBytes: number,
  ) {}

  /** Bytes outside V8's heap just allocated for the data path; may run a scavenge before returning. */
  note(bytes: number): void {
    if (this.collect === null) return;
    this.bytes += bytes;
    if (this.bytes < this.afterBytes) return;
    this.bytes -= this.afterBytes; // the overshoot counts towards the next one: one per afterBytes, exactly
    this.scavenges++;
    this.collect({ type: 'minor' });
  }
}

let shared: ScavengePacer | null = null;

/** The process's pacer (one for every socket: they share one heap). */
export function scavengePacer(): ScavengePacer {
  if (shared === null) {
    const on = process.env.HOMEWIRE_YOUNG_GC !== '0';
    shared = new ScavengePacer(on ? minorCollector() : null, YOUNG_GC_AFTER_BYTES);
  }
  return shared;
}
