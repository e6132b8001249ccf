// Every protocol and implementation constant of homewire, grouped, with units in the names.

// --- Wire format (see README "Wire format") -------------------------------------------------------
export const MSG_HANDSHAKE_INIT = 1;
export const MSG_HANDSHAKE_RESP = 2;
export const MSG_COOKIE_REPLY = 3; // "you are sending under load: retry with this cookie" (mesh/cookie.ts)
export const MSG_DATA = 4; // encrypted Ethernet frame (empty payload = keepalive)
export const MSG_SIGNAL = 5; // encrypted signal message (mesh signalling; same session and counter space as data)
export const MSG_RELAY_DATA = 6; // a frame relayed through an introducer; reserved bytes = a 24-bit site id
export const MSG_RELAY_SIGNAL = 7; // a signal message relayed the same way

export const TRANSPORT_HEADER_BYTES = 12; // type u8, 3 reserved, receiver index u32 LE, counter's low u32 LE
export const AEAD_TAG_BYTES = 16;
export const TRANSPORT_OVERHEAD_BYTES = TRANSPORT_HEADER_BYTES + AEAD_TAG_BYTES;
export const NOISE_KEY_BYTES = 32;
export const TIMESTAMP_BYTES = 12; // TAI64N-like: u64 seconds BE + u32 nanoseconds BE
export const HANDSHAKE_MAC_BYTES = 16; // mac1 and mac2, each a keyed BLAKE2b-128 (mesh/cookie.ts)
// init: type(1) 3 reserved, sender u32, e(32), enc s(32+16), enc timestamp(12+16), mac1, mac2
export const HANDSHAKE_INIT_NOISE_END = 8 + 32 + 48 + TIMESTAMP_BYTES + 16; // 108: mac1 covers [0, this)
export const HANDSHAKE_INIT_BYTES = HANDSHAKE_INIT_NOISE_END + 2 * HANDSHAKE_MAC_BYTES;
// resp: type(1) 3 reserved, sender u32, receiver u32, e(32), enc empty(16), mac1, mac2
export const HANDSHAKE_RESP_NOISE_END = 12 + 32 + 16; // 60
export const HANDSHAKE_RESP_BYTES = HANDSHAKE_RESP_NOISE_END + 2 * HANDSHAKE_MAC_BYTES;
// cookie reply: type(1) 3 reserved, receiver u32, nonce(24), XChaCha20-Poly1305(cookie(16)) (+16 tag)
export const COOKIE_NONCE_BYTES = 24;
export const COOKIE_BYTES = 16;
export const COOKIE_REPLY_BYTES = 8 + COOKIE_NONCE_BYTES + COOKIE_BYTES + 16;
export const NOISE_PROLOGUE = Buffer.from('homewire v2'); // v2: the 12-byte transport header

// --- Sites behind NAT: introductions, relay, paths, TCP fallback (README "Sites behind NAT") -------
export const SITE_ID_BROADCAST = 0xff_ffff; // relayed frame for every site the relay serves (it fans out)
export const SITE_ID_MAX = 0xff_fffe; // site ids are 1..SITE_ID_MAX (0: none)
export const INTRO_REPEAT_MS = [0, 1_000, 3_000]; // a directory change is sent again (UDP may lose one)
export const INTRO_REFRESH_MS = 60_000; // an introducer re-sends its whole directory this often
export const INTRO_LEASE_MS = 3 * INTRO_REFRESH_MS; // an introduced peer not re-introduced this long is removed
export const INTRODUCED_PEERS_MAX = 4_096; // introduced peers one site keeps at most
export const CANDIDATES_MAX = 8; // endpoints in one introduction or candidate list
export const CANDIDATES_REFRESH_MS = 60_000; // a site re-sends its local addresses to its introducers
export const DNS_REFRESH_MS = 30_000; // DNS endpoints are resolved again this often
export const DNS_RETRY_MIN_MS = 1_000; // and after a handshake failure, at most this often
export const PING_INTERVAL_MS = 500; // a direct path to an introduced peer is probed this often while in use
export const DIRECT_TRUST_MS = 1_500; // no answer to a probe for this long: back to the relay
export const DIRECT_IDLE_MS = 60_000; // no data to an introduced peer for this long: stop probing
export const PUNCH_BACKOFF_MS = [0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]; // then 60 s
export const PUNCH_ANSWER_MIN_MS = 300; // a peer's punch request starts our initiation at most this often
export const TCP_FALLBACK_AFTER_MS = 2_000; // no UDP answer from a peer with endpoint_tcp: connect over TCP
export const TCP_RETRY_UDP_MS = 30_000; // while on TCP, try UDP again this often
export const TCP_CONNECTIONS_MAX = 1_024; // accepted TCP connections at most (listen_tcp)
export const TCP_IDLE_MS = 60_000; // a TCP connection without a datagram this long is closed
export const TCP_FRAME_MAX_BYTES = 2_048; // a length prefix beyond this closes the connection
export const TCP_WRITE_BUFFER_MAX_BYTES = 4 * 1024 * 1024; // datagrams beyond this queue are dropped

// --- Underlay and MTU ------------------------------------------------------------------------------
export const UNDERLAY_MTU_BYTES = 1500;
export const IPV4_HEADER_BYTES = 20;
export const IPV6_HEADER_BYTES = 40;
export const UDP_HEADER_BYTES = 8;
export const ETHERNET_HEADER_BYTES = 14;
export const DEFAULT_PORT = 51820;
/** TAP MTU that fits one untagged frame in a 1500-byte underlay packet without fragmentation (1430 over IPv4:
 *  a 1400-byte UDP datagram is one frame). A guest's VLAN-tagged frame is 4 bytes longer: such guests need a
 *  tap.mtu 4 lower, or their full-size tagged frames are dropped as too_big. */
export function defaultTapMtu(family: 4 | 6): number {
  const ip = family === 6 ? IPV6_HEADER_BYTES : IPV4_HEADER_BYTES;
  return UNDERLAY_MTU_BYTES - ip - UDP_HEADER_BYTES - TRANSPORT_OVERHEAD_BYTES - ETHERNET_HEADER_BYTES;
}
/** Largest Ethernet frame (header included) that fits one underlay datagram for this family. */
export function maxFrameBytes(family: 4 | 6): number {
  const ip = family === 6 ? IPV6_HEADER_BYTES : IPV4_HEADER_BYTES;
  return UNDERLAY_MTU_BYTES - ip - UDP_HEADER_BYTES - TRANSPORT_OVERHEAD_BYTES;
}

// --- Session timers (WireGuard's values) ----------------------------------------------------------
export const REKEY_AFTER_MS = 120_000;
export const REJECT_AFTER_MS = 180_000;
export const REKEY_AFTER_MESSAGES = 2n ** 60n;
export const REKEY_TIMEOUT_MS = 5_000; // handshake retry interval
/** A session replaced while the peer may still be sending on it (two handshakes that crossed turn a site's
 *  sessions over twice within a round trip) is still accepted for receiving this long, at most this many. */
export const DISPLACED_SESSION_GRACE_MS = REKEY_TIMEOUT_MS;
export const DISPLACED_SESSIONS_MAX = 2;
export const REKEY_JITTER_MS = 333;
export const KEEPALIVE_TIMEOUT_MS = 10_000; // passive keepalive after receiving without sending
export const PEER_DOWN_AFTER_MS = KEEPALIVE_TIMEOUT_MS + REKEY_TIMEOUT_MS + 10_000;

// --- Replay window (RFC 6479) ---------------------------------------------------------------------
export const REPLAY_WINDOW_BITS = 8192; // ring of 256 32-bit words; >= 2048 usable packets
export const REPLAY_WORD_BITS = 32;

// --- Handshake processing (never on the data path) ------------------------------------------------
export const HANDSHAKE_QUEUE_MAX = 1024; // queued handshake messages beyond this are dropped
export const HANDSHAKES_PER_TICK_MAX = 64; // handshake messages processed per queue turn
export const HANDSHAKE_TURN_BUDGET_MS = 4; // ... or fewer: a turn stops after this long (a Noise DH costs 1-8 ms here)
// Handshake guard (mesh/cookie.ts, WireGuard's values): under load, a handshake without a valid mac2 gets a
// cookie reply instead of a Diffie-Hellman; with one, each source address gets a token bucket.
export const UNDER_LOAD_QUEUE_LEN = 32; // queued initiations that mean "under load" (WireGuard: 1/8 of its queue;
// a Noise DH costs this daemon 100x what it costs WireGuard, so 32 is already a backlog of 30-250 ms)
export const UNDER_LOAD_HOLD_MS = 1_000; // stay under load this long after the queue was that long
// ... or after this many initiations arrived within one second (sites rekey every 2 minutes: even 200 of them
// starting at once is 200 in a second; a flood is thousands, and must not get 32 Diffie-Hellmans a second)
export const UNDER_LOAD_INITIATIONS_PER_SECOND = 100;
export const COOKIE_SECRET_MS = 120_000; // the responder's cookie secret changes this often
export const COOKIE_VALID_MS = COOKIE_SECRET_MS - 5_000; // an initiator uses a received cookie this long
export const HANDSHAKE_SOURCE_PER_SECOND = 20; // per-source token bucket under load
export const HANDSHAKE_SOURCE_BURST = 5;
export const HANDSHAKE_SOURCES_MAX = 65_536; // token buckets kept; beyond this new sources are refused
// Cookie replies to sources that are no peer's known endpoint, per second (a spoofed flood gets few answers
// and costs little; a known peer's endpoint always gets its cookie).
export const COOKIE_REPLIES_UNKNOWN_PER_SECOND = 1_000;

// --- Switch -----------------------------------------------------------------------------------------
export const MAC_AGEING_MS = 300_000; // like Linux bridges
export const MAC_TABLE_MAX = 16_384;

// --- Segment security (src/security/) -----------------------------------------------------------------
export const DEFAULT_MAX_MACS_PER_SITE = 32; // MACs learned on a guests side (no guest list from the coordinator)
export const DEFAULT_MAX_MACS_PER_PEER = 1_024; // MAC table entries one peer (or a LAN side) may hold here
export const DEFAULT_FLOOD_PPS = 1_000; // per site and kind: broadcast, multicast, unknown unicast
export const LOCAL_PIN_MS = 86_400_000; // a MAC seen on the local side stays pinned here this long after
export const OWNER_RECORDS_MAX = 2 * MAC_TABLE_MAX; // remembered local pins of aged-out entries
export const AUTHORIZE_MOVE_MAX_MS = 600_000; // an authorized move is valid at most this long
export const AUTHORIZATIONS_MAX = 4_096;
export const GUEST_MACS_MAX = 4_096; // setGuestMacs: entries accepted
export const BINDINGS_MAX = 16_384; // IP-MAC bindings (ARP/ND inspection)
export const LEARNED_BINDING_MS = 600_000; // a learned (not DHCP or reserved) binding lasts this long unseen
export const SECURITY_LOG_INTERVAL_MS = 10_000; // a repeated security warning is logged at most this often

// --- Express path (src/express.ts, native/express.cc) ---------------------------------------------------
// How long an install vouches for a MAC's port or a session without JavaScript looking again (renewed at half
// of it by the next frame JavaScript carries; any change flushes everything at once).
export const EXPRESS_LEASE_MS = 1_000;

// --- Timers -----------------------------------------------------------------------------------------
export const TICK_MS = 250; // one tick drives all ageing, retries, keepalives

// --- TAP --------------------------------------------------------------------------------------------
export const TAP_FRAMES_PER_WAKEUP = 128; // slab slots: a 64 KB TSO read alone cuts into ~48 frames
export const TAP_FRAME_STRIDE_BYTES = 9216; // room for jumbo frames up to 9 KB
// The kernel's queue towards the daemon (its ring; the kernel's default). 64 was tried (2026-12-01): on a loaded
// machine it shortened the wait of a ping behind a bulk TCP stream from this host, but on a quiet one it halved
// UDP at 1400 B (99 vs 162-224 Mbit/s, bench:peers --only homewire, alternating 1000/64 twice, load 1.3-2):
// each such datagram is two frames here, and a sender's burst overflowed 64. Drops there are tap_ring_full.
export const TAP_TX_QUEUE_LEN = 1000;
export const TAP_WRITE_QUEUE_MAX = 1024; // frames waiting on EAGAIN (or for the writer thread) before drops
export const TAP_WRITE_QUEUE_BYTES = 16 * 1024 * 1024; // writer thread: memory bound (native/delay.h bounds the wait)
// A write batch yields the CPU after this many frames: every TAP write runs the receiving stack and fills an
// application's socket at once, and a whole receive wake-up's worth written in one go outran an application
// with a default 208 KB buffer (iperf3 -u at 350 Mbit/s, 1400 B: loss 2.1-3.9 % without, 0.6-2.3 % with 32).
export const TAP_WRITE_YIELD_FRAMES = 32;

// --- UDP receive (native/udp_rx.cc) -----------------------------------------------------------------
export const UDP_RX_DATAGRAMS_MAX = 1024; // datagrams per JS call (a coalesced run holds up to 64)
export const UDP_RX_BUFFER_BYTES = 65_536; // per received message: a coalesced (GRO) run is up to 64 KB
export const UDP_RX_SLAB_BYTES = 4 * 1024 * 1024; // a batch is staged here natively, then copied to a Buffer of its own
export const YOUNG_GC_AFTER_BYTES = 16 * 1024 * 1024; // receive batches and sealed datagrams between scavenges (src/heap.ts)
export const UDP_TX_QUEUE_MAX = 64; // batches (each up to a TAP read's worth) waiting for the send thread
export const UDP_TX_QUEUE_BYTES = 16 * 1024 * 1024; // send thread: memory bound (native/delay.h bounds the wait)
// The receive buffer is the queue in front of a busy daemon: TCP through the mesh fills it, and a ping waits behind
// it (1 MB: 9 ms under a TCP stream on this machine, 256 KB: 3.8 ms, 128 KB: 2.8 ms; 128 KB holds a UDP stream's
// bursts only because the receiver no longer pauses for full collections, src/heap.ts). The kernel doubles both.
export const UDP_RECV_BUFFER_BYTES = 128 * 1024;
export const UDP_SEND_BUFFER_BYTES = 1024 * 1024; // the send thread's or sendmmsg's room before EAGAIN

// --- MAC mobility (live migration) ------------------------------------------------------------------
export const MOVE_FORWARD_GRACE_MS = 2_000; // old host forwards frames for a moved MAC to its new host
export const MOVE_SETTLE_MS = 1_000; // after an announced move, data-plane learning may not move it back
export const EXPECT_DUAL_SEND_MS = 15_000; // "about to arrive": frames go to both hosts this long at most
export const FLAP_MOVES_MAX = 6; // more moves than this within FLAP_WINDOW_MS is flapping
export const FLAP_WINDOW_MS = 10_000;
export const FLAP_HOLDDOWN_MS = 30_000; // a flapping MAC stays where it is this long
export const ANNOUNCE_REPEAT_MS = [0, 50, 200]; // a move is announced again (UDP may lose one)
