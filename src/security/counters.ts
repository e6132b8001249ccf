// The segment defences' drop counters, one class per defence (plain fields: the data path bumps them, the
// metrics read them at scrape time as homewire_<defence>_drops_total{reason}).
export class PortSecurityDrops {
  unknown_mac = 0; // strict with a guest list: not one of this host's guests
  too_many_macs = 0; // more local MACs than max_macs_per_site (or max_macs_per_peer on a LAN side)
  remote_mac = 0; // a MAC another site holds, without an authorized move here
  bad_source = 0; // a group (multicast) source MAC
}

export class OwnershipDrops {
  local_mac = 0; // a peer's frame from a MAC pinned on this site's local side
  owned_elsewhere = 0; // a peer's frame from a MAC another peer holds (mac_moves: authorized)
  move_refused = 0; // MAC_AT for a MAC the peer may not claim
  expect_refused = 0; // EXPECT for a MAC that is neither authorized to move to the peer nor its own
  peer_quota = 0; // the peer already holds max_macs_per_peer MACs here
  bad_source = 0; // a group source MAC from a peer
}

export class SnoopingDrops {
  server_from_guest = 0; // DHCP server reply (UDP 67->68) from a guest
  server_from_peer = 0; // ... from a peer that is not a trusted DHCP server
  server_from_lan = 0; // ... from the home LAN while homewire serves it (serve_local: true): kept local
  lan_dhcp_kept_local = 0; // home-LAN DHCP while serve_local is false: not sent into the mesh
  dhcpv6_server_from_guest = 0; // UDP 547->546 from a guest
}

export class InspectionDrops {
  arp_invalid = 0; // not Ethernet/IPv4 ARP
  arp_sha_mismatch = 0; // ARP sender MAC is not the frame's source MAC
  arp_no_binding = 0; // strict: the sender address is not bound (DHCP, reservation) to the sender MAC
  arp_ip_conflict = 0; // learn: the sender address is bound to another MAC
  arp_peer_conflict = 0; // a peer's ARP claims an address bound to another MAC here
  nd_invalid = 0;
  nd_lladdr_mismatch = 0; // NS/NA link-layer option is not the frame's source MAC
  nd_conflict = 0; // the claimed IPv6 address belongs to another MAC
  ra_guard = 0; // router advertisement from a guest
  redirect = 0; // ICMPv6 redirect from a guest
  unparseable = 0; // double VLAN tag, or an IPv6 header chain that hides its upper layer
}
