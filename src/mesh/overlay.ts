// The overlay's own addresses must never serve as underlay endpoints: a host's bridge (tap.bridge) carries an
// address on the home LAN (host_address, or a DHCP lease), and a handshake sent there would travel inside the
// mesh itself (a tunnel in the tunnel, through the relay). This keeps them out of the candidates a site offers,
// out of what introducers pass on, and out of roaming.
import os from 'node:os';
import ipaddr from 'ipaddr.js';

const REFRESH_MS = 5_000;

export class OverlayAddresses {
  private prefixes: [ipaddr.IPv4 | ipaddr.IPv6, number][] = [];
  private readAtMs = -Infinity;

  /** interfaces: the TAP and its bridge (their addresses and subnets are the overlay's). */
  constructor(
    private readonly interfaces: readonly string[],
    private readonly now: () => number = Date.now,
  ) {}

  /** Is this address inside a subnet of the overlay interfaces? (Not for the data path: handshakes, roams.) */
  contains(address: string): boolean {
    if (this.interfaces.length === 0) return false;
    this.refresh();
    if (this.prefixes.length === 0 || !ipaddr.isValid(address)) return false;
    const a = ipaddr.process(address);
    for (const [net, bits] of this.prefixes) if (a.kind() === net.kind() && a.match(net, bits)) return true;
    return false;
  }

  /** The names of the overlay interfaces (left out of local candidates). */
  get names(): readonly string[] {
    return this.interfaces;
  }

  private refresh(): void {
    const now = this.now();
    if (now - this.readAtMs < REFRESH_MS) return;
    this.readAtMs = now;
    const all = os.networkInterfaces();
    this.prefixes = [];
    for (const name of this.interfaces) {
      for (const a of all[name] ?? []) {
        if (!a.cidr) continue;
        try {
          const [net, bits] = ipaddr.parseCIDR(a.cidr);
          this.prefixes.push([net, bits]);
        } catch {
          /* an address node cannot describe: not a candidate anyway */
        }
      }
    }
  }
}
