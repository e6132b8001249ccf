// Signal messages between sites (today: MAC mobility), carried encrypted in MSG_SIGNAL packets (so only configured peers can send
// them, and replays are refused by the session's replay window).
//
//   MAC_AT  (1): ctype | mac(6) | seq u32 BE        "mac is behind me (the sender), sequence seq"
//   EXPECT  (2): ctype | mac(6)                      "mac is about to arrive behind me: send its frames here too"
// The higher sequence wins (EVPN-style); on a tie the claimant with the greater public key wins.

export const SIG_MAC_AT = 1;
export const SIG_EXPECT = 2;

export type SignalMessage =
  | { type: typeof SIG_MAC_AT; mac: number; seq: number }
  | { type: typeof SIG_EXPECT; mac: number };

export function encodeMacAt(mac: number, seq: number): Buffer {
  const b = Buffer.alloc(11);
  b[0] = SIG_MAC_AT;
  b.writeUIntBE(mac, 1, 6);
  b.writeUInt32BE(seq >>> 0, 7);
  return b;
}

export function encodeExpect(mac: number): Buffer {
  const b = Buffer.alloc(7);
  b[0] = SIG_EXPECT;
  b.writeUIntBE(mac, 1, 6);
  return b;
}

/** Decodes a control payload, or null if malformed (never throws). */
export function decodeSignal(b: Buffer): SignalMessage | null {
  if (b.length === 11 && b[0] === SIG_MAC_AT)
    return { type: SIG_MAC_AT, mac: b.readUIntBE(1, 6), seq: b.readUInt32BE(7) };
  if (b.length === 7 && b[0] === SIG_EXPECT) return { type: SIG_EXPECT, mac: b.readUIntBE(1, 6) };
  return null;
}
