// IPv4 fragments on the send path. A guest datagram larger than the TAP MTU (1400-byte UDP in a 1422 MTU)
// leaves the guest as a full-size first fragment and a small tail. Sent in their order, a batch alternates
// big and small datagrams, so no run of equal sizes forms: UDP GSO sends them one by one and UDP GRO on the
// receiver cannot coalesce them. The mesh sends every fragment but the first after the rest of the batch to
// the same peer (mesh.ts, Peer.outboxTail): the first fragments form one equal-size run and the tails another.
// Reassembly takes fragments in any order, and the tails keep their own order, so the datagrams still
// complete in the order the guest sent them. Only IPv4 without a VLAN tag is looked at; everything else keeps
// its place.
const ETH_HEADER_BYTES = 14;
const ETHERTYPE_IPV4 = 0x0800;
const IPV4_FRAGMENT_OFFSET_MASK = 0x1fff;

/** An Ethernet frame carrying an IPv4 fragment that is not the first one (fragment offset > 0). */
export function isTrailingFragment(frame: Buffer): boolean {
  return (
    frame.length >= ETH_HEADER_BYTES + 20 &&
    frame.readUInt16BE(12) === ETHERTYPE_IPV4 &&
    (frame.readUInt16BE(ETH_HEADER_BYTES + 6) & IPV4_FRAGMENT_OFFSET_MASK) !== 0
  );
}
