// DNS endpoints: a peer's `endpoint` (and `endpoint_tcp`) may be a host name. Names are resolved when the mesh
// starts, again every DNS_REFRESH_MS, and after a handshake with the peer failed (at most every
// DNS_RETRY_MIN_MS); every address of the underlay's family becomes a candidate, and initiations go to all of
// them until one answers. A name that does not resolve is logged (once per change) and retried: never fatal.
//
// Lookups go through getaddrinfo (node:dns lookup), so /etc/hosts (and a network namespace's
// /etc/netns/NAME/hosts under `ip netns exec`) answers as it does for any program on the host.
import dns from 'node:dns';
import net from 'node:net';
import { CANDIDATES_MAX, DNS_REFRESH_MS, DNS_RETRY_MIN_MS } from '../constants.ts';
import type { Logger } from '../log.ts';
import type { Endpoint, HostPort, Peer } from './peer.ts';

/** Every address of a host name (A and AAAA), as getaddrinfo orders them. Rejects if it does not resolve. */
export type Lookup = (host: string) => Promise<string[]>;

export const systemLookup: Lookup = async (host) =>
  (await dns.promises.lookup(host, { all: true, verbatim: true })).map((a) => a.address);

interface State {
  nextMs: number;
  lastMs: number;
  inFlight: boolean;
  failing: string | null; // the last error logged (one line per change, not per retry)
}

export class ResolverStats {
  lookups = 0;
  failures = 0;
}

export class Resolver {
  readonly stats = new ResolverStats();
  private readonly state = new Map<Peer, State>();
  private closed = false;

  constructor(
    private readonly family: 4 | 6,
    private readonly lookup: Lookup,
    private readonly log: Logger,
    /** A peer got a new endpoint from DNS (the mesh handshakes at once rather than at its next tick). */
    private readonly resolved: (peer: Peer) => void = () => {},
  ) {}

  /** Resolves what is due (non-blocking: results apply when they arrive). */
  tick(peers: readonly Peer[], now: number): void {
    for (const peer of peers) {
      if (peer.endpointHost === null && peer.endpointTcp === null) continue;
      let s = this.state.get(peer);
      if (s === undefined) {
        s = { nextMs: 0, lastMs: 0, inFlight: false, failing: null };
        this.state.set(peer, s);
      }
      if (s.inFlight || now < s.nextMs) continue;
      s.inFlight = true;
      s.lastMs = now;
      s.nextMs = now + DNS_REFRESH_MS;
      this.resolve(peer, s);
    }
    for (const peer of this.state.keys()) if (peer.removed) this.state.delete(peer);
  }

  /** A handshake with the peer timed out: its name may point elsewhere now. */
  handshakeFailed(peer: Peer, now: number): void {
    const s = this.state.get(peer);
    if (s !== undefined) s.nextMs = Math.min(s.nextMs, s.lastMs + DNS_RETRY_MIN_MS, now + DNS_RETRY_MIN_MS);
  }

  close(): void {
    this.closed = true;
  }

  private async resolve(peer: Peer, s: State): Promise<void> {
    try {
      if (peer.endpointHost !== null) {
        const eps = await this.addresses(peer.endpointHost);
        if (this.closed || peer.removed) return;
        this.applyUdp(peer, eps);
      }
      if (peer.endpointTcp !== null) {
        const eps = await this.addresses(peer.endpointTcp);
        if (this.closed || peer.removed) return;
        peer.tcpCandidates = eps;
      }
      if (s.failing !== null) this.log.info({ peer: peer.name }, 'peer endpoint resolves again');
      s.failing = null;
    } catch (err) {
      this.stats.failures++;
      const error = (err as Error).message;
      if (s.failing !== error && !this.closed) {
        this.log.warn(
          { peer: peer.name, host: peer.endpointHost?.host ?? peer.endpointTcp?.host, error },
          'peer endpoint does not resolve; retrying (check the name and this host’s DNS)',
        );
      }
      s.failing = error;
      s.nextMs = Math.min(s.nextMs, s.lastMs + DNS_RETRY_MIN_MS * 5);
    } finally {
      s.inFlight = false;
    }
  }

  private async addresses(hp: HostPort): Promise<Endpoint[]> {
    let list: string[];
    if (net.isIP(hp.host) !== 0) list = [hp.host];
    else {
      this.stats.lookups++;
      list = await this.lookup(hp.host);
    }
    const eps = list
      .filter((a) => net.isIP(a) === this.family)
      .slice(0, CANDIDATES_MAX)
      .map((address) => ({ address, port: hp.port }));
    if (eps.length === 0)
      throw new Error(`${hp.host} has no IPv${this.family} address (the underlay is IPv${this.family})`);
    return eps;
  }

  private applyUdp(peer: Peer, eps: Endpoint[]): void {
    peer.candidates = eps;
    const ep = peer.endpoint;
    const listed = ep !== null && eps.some((e) => e.address === ep.address && e.port === ep.port);
    // An endpoint learned from the peer's own authenticated packets (roaming, TCP) stays while it works.
    if (listed || (ep !== null && peer.current !== null && peer.learned === 'roaming')) return;
    peer.endpoint = eps[0];
    peer.learned = 'dns';
    this.log.info({ peer: peer.name, endpoint: eps[0], addresses: eps.length }, 'peer endpoint resolved');
    this.resolved(peer);
  }
}
