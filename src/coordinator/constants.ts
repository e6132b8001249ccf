// Every coordinator and host-agent constant, grouped, with units in the names. Time policy lives here and in
// the tick of server.ts; the API and the agent only call hooks.

// --- Host agent ↔ coordinator -----------------------------------------------------------------------
export const HEARTBEAT_LEASES_MAX = 4096; // leases a DHCP site reports per heartbeat (more are ignored)
export const HEARTBEAT_MS = 2_000; // agent → coordinator: alive, its VMs, its free capacity
export const HOST_DOWN_AFTER_MS = 3 * HEARTBEAT_MS + 1_000; // three missed heartbeats: the host is down
export const POLL_WAIT_MS = 20_000; // a long poll is answered after this at the latest (empty: no work)
export const AGENT_RETRY_MS = [250, 500, 1_000, 2_000, 5_000]; // backoff when the coordinator cannot be reached
export const AGENT_REQUEST_TIMEOUT_MS = 10_000; // any agent request but the long poll
export const COMMANDS_PER_POLL_MAX = 32;

// --- Operations (coordinator → agent command, until its result) --------------------------------------
export const START_TIMEOUT_MS = 120_000; // image fetch + QEMU launch
export const INCOMING_TIMEOUT_MS = 120_000; // image fetch + QEMU -incoming launch
export const MIGRATE_TIMEOUT_MS = 300_000; // RAM copy under TCG is slow
export const SHORT_COMMAND_TIMEOUT_MS = 15_000; // expect, authorize-move, confirm, stop
/** How long a daemon lets a migrating guest's MAC move to the destination (the whole migration, and then some). */
export const AUTHORIZE_MOVE_TTL_MS = MIGRATE_TIMEOUT_MS + 60_000;
export const SNAPSHOT_TIMEOUT_MS = 300_000; // save RAM to a file, copy the overlay, upload both
/** After a leader takes over, agents get this long to report before unfinished operations are settled. */
export const TAKEOVER_GRACE_MS = 2 * HEARTBEAT_MS + 1_000;

// --- Leadership (etcd) --------------------------------------------------------------------------------
export const LEADER_LEASE_TTL_S = 2; // a dead leader's lease expires after this; a standby takes over
export const LEADER_RECAMPAIGN_MS = 500; // after a failed campaign (etcd unreachable, lease lost)
export const ETCD_PREFIX = 'homewire/coordinator/';
export const ELECTION_NAME = 'leader';

// --- Coordinator ----------------------------------------------------------------------------------------
export const COORDINATOR_TICK_MS = 500; // one tick: host liveness, settling after takeover
export const API_BODY_MAX_BYTES = 1 << 20;
export const DEFAULT_LISTEN = '127.0.0.1:7100';
export const DEFAULT_DATA_DIR = '/var/lib/homewire/coordinator';
export const TOKEN_MIN_CHARS = 16;
export const HOST_TOKEN_SECRET_BYTES = 32; // a host token is NAME.SECRET, SECRET 256 random bits

// --- VM defaults and limits -----------------------------------------------------------------------------
export const VM_DEFAULT_CPUS = 1;
export const VM_DEFAULT_MEMORY_MIB = 256;
export const VM_MEMORY_MIB_MIN = 32;
export const VM_CPUS_MAX = 256;
export const VM_MEMORY_MIB_MAX = 4 * 1024 * 1024;
export const CMDLINE_MAX_CHARS = 1024; // a guest kernel command line (printable ASCII)

// --- Host agent's own limits (src/agent/validate.ts, images.ts) ------------------------------------------
export const AUTHORIZE_MOVE_TTL_MAX_MS = 600_000; // the daemon keeps an authorized move at most this long
export const IMAGE_SOURCES_MAX = 64;
export const IMAGE_FILE_MAX_BYTES = 16 * 1024 ** 3; // a kernel, initrd or disk larger than this is refused
export const IMAGE_FETCH_TIMEOUT_MS = 300_000;
/** Guest MACs: locally administered unicast (bit 1 of the first octet set, bit 0 clear), "hw" in octets 2-3. */
export const VM_MAC_PREFIX = [0x02, 0x68, 0x77] as const;

// --- Serial consoles and the web page ---------------------------------------------------------------------
/** Scrollback kept per guest by its host agent (and mirrored by the coordinator while viewers watch). */
export const CONSOLE_SCROLLBACK_BYTES = 128 * 1024;
/** The agent has this long to open its console stream after the coordinator asked for it. */
export const CONSOLE_LINK_TIMEOUT_MS = 10_000;
/** After a failed console request, ask the host again after this. */
export const CONSOLE_RETRY_MS = 2_000;
/** The agent's stream stays open this long after the last viewer left (a page reload re-attaches at once). */
export const CONSOLE_LINGER_MS = 5_000;
/** Output unsent to one reader that stops the flow. At the coordinator, a viewer this far behind holds the
 *  agent's stream (read no more) until it catches up; at the agent, a stream to the coordinator this far behind
 *  is closed (the coordinator links again and its viewers learn how many bytes were lost): the guest never waits. */
export const CONSOLE_SEND_BUFFER_MAX_BYTES = 4 * 1024 * 1024;
/** A held agent stream is read again once every viewer has this little unsent. */
export const CONSOLE_VIEWER_RESUME_BYTES = 1024 * 1024;
/** A viewer that holds the stream this long without catching up is closed: one that does not read cannot stall
 *  the others for longer. */
export const CONSOLE_VIEWER_STALL_MS = 5_000;
/** Largest WebSocket message accepted from a viewer (keystrokes, pastes) and from an agent (output). */
export const CONSOLE_VIEWER_MESSAGE_MAX_BYTES = 64 * 1024;
export const CONSOLE_AGENT_MESSAGE_MAX_BYTES = 256 * 1024;
/** The coordinator re-reads VMs and hosts this often while a page or a console watches (live updates). */
export const WATCH_INTERVAL_MS = 250;
/** A comment line on idle event streams, so proxies and browsers keep them open. */
export const EVENTS_KEEPALIVE_MS = 15_000;
