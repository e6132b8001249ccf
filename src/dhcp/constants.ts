// Every DHCP protocol and implementation constant, grouped, with units in the names. Kept beside the DHCP
// module (not in src/constants.ts) so the module stays self-contained; the values are the module's policy.

// --- Wire (RFC 2131, RFC 2132) ---------------------------------------------------------------------
export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;
export const DHCP_MAGIC_COOKIE = 0x63825363;
export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const HTYPE_ETHERNET = 1;
export const MAC_BYTES = 6;
export const BOOTP_FIXED_BYTES = 236; // op .. file, before the magic cookie
export const BOOTP_SNAME_OFFSET = 44;
export const BOOTP_SNAME_BYTES = 64;
export const BOOTP_FILE_OFFSET = 108;
export const BOOTP_FILE_BYTES = 128;
export const DHCP_OPTIONS_OFFSET = 240; // after the magic cookie
export const BOOTP_MIN_MESSAGE_BYTES = 300; // old BOOTP clients drop shorter replies: pad up to this
export const BOOTP_FLAG_BROADCAST = 0x8000;
export const IP_DATAGRAM_MIN_BYTES = 576; // every host accepts this much (RFC 791); DHCP's default limit
export const DHCP_OPTION_VALUE_MAX_BYTES = 255; // longer values are split (RFC 3396)

export const DHCPDISCOVER = 1;
export const DHCPOFFER = 2;
export const DHCPREQUEST = 3;
export const DHCPDECLINE = 4;
export const DHCPACK = 5;
export const DHCPNAK = 6;
export const DHCPRELEASE = 7;
export const DHCPINFORM = 8;

export const OPT_PAD = 0;
export const OPT_SUBNET_MASK = 1;
export const OPT_ROUTER = 3;
export const OPT_DNS = 6;
export const OPT_HOSTNAME = 12;
export const OPT_DOMAIN = 15;
export const OPT_INTERFACE_MTU = 26;
export const OPT_BROADCAST = 28;
export const OPT_REQUESTED_IP = 50;
export const OPT_LEASE_TIME = 51;
export const OPT_OVERLOAD = 52;
export const OPT_MESSAGE_TYPE = 53;
export const OPT_SERVER_ID = 54;
export const OPT_PARAMETER_LIST = 55;
export const OPT_MESSAGE = 56;
export const OPT_MAX_MESSAGE_SIZE = 57;
export const OPT_RENEWAL_TIME = 58;
export const OPT_REBINDING_TIME = 59;
export const OPT_CLIENT_ID = 61;
export const OPT_CLASSLESS_ROUTES = 121;
export const OPT_END = 255;

export const OVERLOAD_FILE = 1;
export const OVERLOAD_SNAME = 2;

// --- Ethernet / IPv4 / UDP / ARP -------------------------------------------------------------------
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const IP_PROTO_UDP = 17;
export const IP_TTL_HOPS = 64;
export const ARP_PACKET_BYTES = 28;
export const ARP_OP_REQUEST = 1;
export const ARP_OP_REPLY = 2;
export const ETHERNET_MIN_FRAME_BYTES = 60; // without FCS: short frames are padded up to this

// --- Server policy ---------------------------------------------------------------------------------
export const OFFER_HOLD_MS = 30_000; // an offered address stays reserved for its client this long
export const DECLINE_QUARANTINE_MS = 600_000; // a declined address is not offered again for this long
export const RATE_WINDOW_MS = 60_000; // new-lease budget of a site refills over this period
export const DEFAULT_NEW_LEASES_PER_SITE_PER_MINUTE = 16;
export const DEFAULT_MAX_LEASES_PER_SITE = 256; // active leases one peer site may hold
export const DEFAULT_MAX_LEASES_PER_MAC = 2; // a guest whose early and late DHCP clients send different client-ids
export const DEFAULT_LEASE_SECONDS = 3600;
export const LEASE_SECONDS_MIN = 10; // short leases are for tests and labs
export const LEASE_SECONDS_MAX = 365 * 86_400;
export const RENEWAL_TIME_FRACTION = 0.5; // T1 (RFC 2131 4.4.5)
export const REBINDING_TIME_FRACTION = 0.875; // T2
export const POOL_ADDRESSES_MAX = 65_536; // the in-memory pool map is one byte per address
export const LOG_REPEAT_INTERVAL_MS = 10_000; // a repeated warning is logged at most this often
export const DEFAULT_LEASE_DB = '/var/lib/homewire/leases.db';
export const DNS_SERVERS_MAX = 16;
export const CLASSLESS_ROUTES_MAX = 32;
export const HOSTNAME_MAX_BYTES = 63;
