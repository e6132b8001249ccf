// The express path's JavaScript side. native/express.cc carries established unicast flows without entering
// JavaScript (each wake-up's leading run of frames on the TAP, or of datagrams on the socket, that it can vouch
// for); everything else, and anything it cannot vouch for, still comes here unchanged, in order.
//
// JavaScript stays the authority. It installs what its own path just did, nothing more:
//   switch.ts  a MAC's port, after it carried a frame from or to that MAC on the same port (the local side,
//              or the peer the table places it behind), never for the DHCP server's MAC or a MAC with a
//              pending dual send (EXPECT);
//   mesh.ts    a peer's sending session, after it sealed a data frame on it to a UDP endpoint (configured
//              peers only: paths to introduced sites change with time); a receiving session, after a data
//              message on the peer's current or previous session came from its current endpoint.
// Each install lasts EXPRESS_LEASE_MS (renewed when half of it is gone, by the next frame JavaScript carries)
// and every change of a MAC's port, a dual send, a sending session, an endpoint or a peer flushes the whole
// table: the native side never acts on anything older than JavaScript's last look. Per-peer and per-MAC
// statistics come back every tick (collect).
//
// Without the addon (in-process tests on the in-memory twins) the same object is a no-op: native === null.
import { EXPRESS_LEASE_MS, REJECT_AFTER_MS } from './constants.ts';
import type { Keypair } from './mesh/keypair.ts';
import type { Endpoint, Peer } from './mesh/peer.ts';

/** The addon's Express object (native/express.cc). */
export interface NativeExpress {
  mac(mac: number, port: number, untilMs: number): void;
  send(
    peerId: number,
    key: object,
    state: Float64Array,
    remoteIndex: number,
    address: string,
    port: number,
    untilMs: number,
  ): boolean;
  recv(
    localIndex: number,
    peerId: number,
    key: object,
    state: Float64Array,
    ring: Uint32Array,
    address: string,
    port: number,
    untilMs: number,
  ): boolean;
  flush(): void;
  collect(out: Float64Array): number;
  readonly size: number;
}

export type NativeExpressCtor = new (opts: {
  counters: Float64Array;
  maxFrameBytes: number;
  readAfterWrite: boolean;
}) => NativeExpress;

/** Where a MAC's install mark lives (the switch's table entries). */
export interface ExpressMark {
  exGen: number;
  exUntil: number;
}

/** What collect() updates: peers by id, MAC table entries by MAC, the mesh's drop counters. */
export interface ExpressSink {
  peer(id: number): Peer | undefined;
  entry(mac: number): { rxBytes: number; txBytes: number; seenMs: number } | undefined;
  authFailed(n: number): void;
}

/** The native counters' layout (checked against the addon's EXPRESS_COUNTER_NAMES at load). */
export const EXPRESS_COUNTER_NAMES = [
  'txFrames',
  'txBytes',
  'rxFrames',
  'rxBytes',
  'txToJs',
  'rxToJs',
  'txErrors',
  'lastErrno',
  'rxAuthFailed',
] as const;
export const EXPRESS_TX_FRAMES = 0;
export const EXPRESS_TX_BYTES = 1;
const EXPRESS_RX_AUTH_FAILED = 8;
export type ExpressCounters = Record<(typeof EXPRESS_COUNTER_NAMES)[number], number>;

const LOCAL_PORT = -1;
const RECORD = 8;
const RECORD_PEER = 1;
const RECORD_MAC = 2;

export class Express {
  /** The table generation: marks of an older one are stale (flush). */
  private gen = 0;
  /** Flushes so far, and installs made (both cheap; for status). */
  flushes = 0;
  installs = 0;
  private readonly out = new Float64Array(RECORD * 256);
  private authFailedSeen = 0;

  constructor(
    readonly native: NativeExpress | null,
    readonly counters = new Float64Array(EXPRESS_COUNTER_NAMES.length),
  ) {}

  /** The addon's express path, or the no-op one if the addon has none (or another counter layout). */
  static open(addon: Record<string, unknown> | null, maxFrameBytes: number, readAfterWrite: boolean): Express {
    const ctor = addon?.Express as NativeExpressCtor | undefined;
    const names = addon?.EXPRESS_COUNTER_NAMES as string[] | undefined;
    if (typeof ctor !== 'function' || !names || names.join() !== EXPRESS_COUNTER_NAMES.join()) return noExpress();
    const counters = new Float64Array(EXPRESS_COUNTER_NAMES.length);
    return new Express(new ctor({ counters, maxFrameBytes, readAfterWrite }), counters);
  }

  get enabled(): boolean {
    return this.native !== null;
  }

  /** The lease to install now for `m` (at most until `cap`), or 0 if its install is still fresh (or there is
   *  no native side). Marks `m` with it. */
  private claim(m: ExpressMark, now: number, cap = Number.POSITIVE_INFINITY): number {
    if (this.native === null || (m.exGen === this.gen && m.exUntil - now > EXPRESS_LEASE_MS / 2)) return 0;
    m.exGen = this.gen;
    m.exUntil = Math.min(Date.now() + EXPRESS_LEASE_MS, cap);
    this.installs++;
    return m.exUntil;
  }

  /** The switch carried a frame from or to `mac`, which its table places at `port` (null: the local side). */
  mac(entry: ExpressMark, mac: number, port: Peer | null, now: number): void {
    const until = this.claim(entry, now);
    if (until > 0) this.native!.mac(mac, port === null ? LOCAL_PORT : port.id, until);
  }

  /** The mesh sealed a data frame for `peer` on `kp` to UDP endpoint `ep`, a path it trusts until `trustUntil`. */
  sending(peer: Peer, kp: Keypair, ep: Endpoint, now: number, trustUntil = Number.POSITIVE_INFINITY): void {
    const key = kp.sendAead.native;
    const cap = Math.min(kp.createdMs + REJECT_AFTER_MS, trustUntil);
    const until = key === null || cap <= now ? 0 : this.claim(kp.expressSend, now, cap);
    if (until > 0) this.native!.send(peer.id, key!, kp.state, kp.remoteIndex, ep.address, ep.port, until);
  }

  /** The mesh accepted a data message from `peer` on `kp` (its current or previous session) from `ep` (its
   *  endpoint). */
  receiving(peer: Peer, kp: Keypair, ep: Endpoint, now: number): void {
    const key = kp.recvAead.native;
    const until = key === null ? 0 : this.claim(kp.expressRecv, now, kp.createdMs + REJECT_AFTER_MS);
    if (until > 0) this.native!.recv(kp.localIndex, peer.id, key!, kp.state, kp.ring, ep.address, ep.port, until);
  }

  /** Something the table vouched for changed: forget all of it. */
  flush(): void {
    if (this.native === null) return;
    this.gen++;
    this.flushes++;
    this.native.flush();
  }

  /** Brings what the native side carried into the peers' and MAC entries' statistics. */
  collect(sink: ExpressSink): void {
    const native = this.native;
    if (native === null) return;
    const authFailed = this.counters[EXPRESS_RX_AUTH_FAILED];
    if (authFailed !== this.authFailedSeen) {
      sink.authFailed(authFailed - this.authFailedSeen);
      this.authFailedSeen = authFailed;
    }
    const o = this.out;
    for (let n = native.collect(o); n > 0; n = native.collect(o)) {
      for (let i = 0; i < n; i++) {
        const r = i * RECORD;
        if (o[r] === RECORD_PEER) {
          const p = sink.peer(o[r + 1]);
          if (p === undefined) continue;
          p.stats.rxPackets += o[r + 2];
          p.stats.rxBytes += o[r + 3];
          p.stats.txPackets += o[r + 4];
          p.stats.txBytes += o[r + 5];
          const recv = o[r + 6];
          const sent = o[r + 7];
          if (recv > p.lastRecvMs) p.lastRecvMs = recv;
          if (recv > p.lastDirectRecvMs) p.lastDirectRecvMs = recv;
          if (sent > p.lastSentMs) p.lastSentMs = sent;
          const data = Math.max(recv, sent);
          if (data > p.lastDataMs) p.lastDataMs = data;
        } else if (o[r] === RECORD_MAC) {
          const e = sink.entry(o[r + 1]);
          if (e === undefined) continue;
          e.rxBytes += o[r + 2];
          e.txBytes += o[r + 3];
          if (o[r + 4] > e.seenMs) e.seenMs = o[r + 4];
        }
      }
    }
  }

  /** For status: the native counters by name. */
  report(): ExpressCounters & { enabled: boolean; installed: number; flushes: number; installs: number } {
    const c = {} as ExpressCounters;
    EXPRESS_COUNTER_NAMES.forEach((name, i) => {
      c[name] = this.counters[i];
    });
    return {
      enabled: this.enabled,
      ...c,
      installed: this.native?.size ?? 0,
      flushes: this.flushes,
      installs: this.installs,
    };
  }
}

/** The no-op express path (no addon, or HOMEWIRE_EXPRESS=0). */
export function noExpress(): Express {
  return new Express(null);
}
