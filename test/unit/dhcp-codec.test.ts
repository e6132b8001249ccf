// DHCP codec and framing: round trips, pads, overload (file/sname), RFC 3396 long options, RFC 3442 option
// 121, malformed input decoding to null, checksums, and the config validation.
import test from 'ava';
import path from 'node:path';
import {
  decodeClasslessRoutes,
  decodeDhcp,
  encodeClasslessRoutes,
  encodeDhcp,
  messageType,
  optionIp,
  u32,
  u8,
  type DhcpHeader,
  type OptionList,
} from '../../src/dhcp/codec.ts';
import { parseDhcpConfig } from '../../src/dhcp/config.ts';
import { BOOTP_FILE_OFFSET, BOOTP_SNAME_OFFSET, DHCP_MAGIC_COOKIE } from '../../src/dhcp/constants.ts';
import { buildArpReply, FRAME_HEADROOM_BYTES, fillDhcpReplyHeaders, parseArp, parseUdp } from '../../src/dhcp/frame.ts';
import { clientFrame, parseReply, simMac } from '../../lab/dhcp-client-sim.ts';
import { parseIPv4 } from '../../src/dhcp/ip.ts';
import { ConfigError } from '../../src/errors.ts';

const ip = (s: string) => parseIPv4(s)!;

function header(): DhcpHeader {
  const chaddr = Buffer.alloc(16);
  simMac(7).copy(chaddr);
  return {
    op: 2,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: 0xdeadbeef,
    secs: 3,
    flags: 0x8000,
    ciaddr: ip('192.168.77.5'),
    yiaddr: ip('192.168.77.100'),
    siaddr: 0,
    giaddr: 0,
    chaddr,
  };
}

/** A BOOTREQUEST with a hand-written options area (bytes after the cookie). */
function rawMessage(options: number[], total = 300): Buffer {
  const b = Buffer.alloc(Math.max(total, 240 + options.length));
  b[0] = 1;
  b[1] = 1;
  b[2] = 6;
  b.writeUInt32BE(0x01020304, 4);
  simMac(1).copy(b, 28);
  b.writeUInt32BE(DHCP_MAGIC_COOKIE, 236);
  Buffer.from(options).copy(b, 240);
  return b;
}

test('encode/decode round trip keeps header and options', (t) => {
  const opts: OptionList = [
    [53, u8(5)],
    [54, u32(ip('192.168.77.2'))],
    [51, u32(3600)],
    [12, Buffer.from('vm1')],
    [80, Buffer.alloc(0)],
  ];
  const b = encodeDhcp(header(), opts, 548)!;
  t.is(b.length, 300, 'padded to the BOOTP minimum');
  const m = decodeDhcp(b)!;
  t.truthy(m);
  const h = header();
  for (const k of [
    'op',
    'htype',
    'hlen',
    'hops',
    'xid',
    'secs',
    'flags',
    'ciaddr',
    'yiaddr',
    'siaddr',
    'giaddr',
  ] as const)
    t.is(m[k], h[k], k);
  t.deepEqual(m.chaddr, h.chaddr);
  t.is(messageType(m), 5);
  t.is(optionIp(m, 54), ip('192.168.77.2'));
  t.is(m.options.get(12)!.toString(), 'vm1');
  t.is(m.options.get(80)!.length, 0, 'empty option (rapid commit) survives');
  t.is(m.overload, 0);
});

test('headroom: the message starts at the given offset', (t) => {
  const b = encodeDhcp(header(), [[53, u8(2)]], 548, FRAME_HEADROOM_BYTES)!;
  t.is(b.length, FRAME_HEADROOM_BYTES + 300);
  t.is(messageType(decodeDhcp(b.subarray(FRAME_HEADROOM_BYTES))!), 2);
});

test('pad bytes anywhere in the options area are skipped', (t) => {
  const m = decodeDhcp(rawMessage([0, 0, 53, 1, 1, 0, 0, 0, 12, 3, 0x61, 0x62, 0x63, 0, 255, 7, 7, 7]))!;
  t.truthy(m);
  t.is(messageType(m), 1);
  t.is(m.options.get(12)!.toString(), 'abc');
  t.is(m.options.size, 2, 'bytes after END are ignored');
  const onlyPads = decodeDhcp(rawMessage([0, 0, 0, 0]))!;
  t.is(onlyPads.options.size, 0);
});

test('a message without END is accepted when its options are complete', (t) => {
  const m = decodeDhcp(rawMessage([53, 1, 3], 243))!;
  t.is(messageType(m), 3);
});

test('repeated options are concatenated (RFC 3396) and long values are split when encoding', (t) => {
  const m = decodeDhcp(rawMessage([6, 4, 1, 1, 1, 1, 53, 1, 1, 6, 4, 8, 8, 8, 8, 255]))!;
  t.deepEqual([...m.options.get(6)!], [1, 1, 1, 1, 8, 8, 8, 8]);
  const long = Buffer.alloc(300, 0x41);
  const b = encodeDhcp(
    header(),
    [
      [53, u8(5)],
      [77, long],
    ],
    1500,
  )!;
  t.is(b[240 + 3], 77);
  t.is(b[240 + 4], 255, 'first piece 255 bytes');
  t.deepEqual(decodeDhcp(b)!.options.get(77), long);
});

test('overload: options that do not fit go to file, then sname, and decode back', (t) => {
  const opts: OptionList = [[53, u8(5)]];
  for (let code = 200; code < 213; code++) opts.push([code, Buffer.alloc(30, code)]); // 13 * 32 bytes: 9 + 3 + 1
  const b = encodeDhcp(header(), opts, 548)!;
  t.truthy(b);
  t.true(b.length <= 548);
  const m = decodeDhcp(b)!;
  t.is(m.overload, 3, 'both file and sname used');
  for (const [code, v] of opts) t.deepEqual(m.options.get(code), v, `option ${code}`);
  t.false(m.options.has(52), 'option 52 itself is not reported as an option');
  t.is(b[BOOTP_FILE_OFFSET] !== 0, true);
  t.is(encodeDhcp(header(), [...opts, [250, Buffer.alloc(200)]], 548), null, 'too much even with overload');
});

test('overload: an option too long for any one field is split across fields (RFC 3396)', (t) => {
  const long = Buffer.from(Array.from({ length: 400 }, (_, i) => i & 255));
  const b = encodeDhcp(
    header(),
    [
      [53, u8(5)],
      [121, long],
      [12, Buffer.from('vm')],
    ],
    548,
  )!;
  t.truthy(b);
  t.is(b.length, 548);
  const m = decodeDhcp(b)!;
  t.deepEqual(m.options.get(121), long);
  t.is(m.options.get(12)!.toString(), 'vm');
  t.is(messageType(m), 5);
});

test('overload: a hand-made message with options in file and sname', (t) => {
  const b = rawMessage([53, 1, 1, 52, 1, 3, 255]);
  Buffer.from([12, 2, 0x68, 0x69, 255]).copy(b, BOOTP_FILE_OFFSET);
  Buffer.from([0, 15, 3, 0x61, 0x62, 0x63, 255]).copy(b, BOOTP_SNAME_OFFSET);
  const m = decodeDhcp(b)!;
  t.is(m.options.get(12)!.toString(), 'hi');
  t.is(m.options.get(15)!.toString(), 'abc');
  // Without option 52, the same bytes in file/sname are just a file name and a server name.
  const plain = rawMessage([53, 1, 1, 255]);
  Buffer.from([12, 2, 0x68, 0x69, 255]).copy(plain, BOOTP_FILE_OFFSET);
  t.false(decodeDhcp(plain)!.options.has(12));
});

test('malformed messages decode to null, never throw', (t) => {
  t.is(decodeDhcp(Buffer.alloc(0)), null);
  t.is(decodeDhcp(rawMessage([53, 1, 1, 255]).subarray(0, 239)), null, 'truncated before the cookie ends');
  const badCookie = rawMessage([53, 1, 1, 255]);
  badCookie.writeUInt32BE(0x63825364, 236);
  t.is(decodeDhcp(badCookie), null, 'bad magic cookie');
  t.is(decodeDhcp(rawMessage([53, 1, 1, 12, 10, 0x61], 246)), null, 'option length past the end');
  t.is(decodeDhcp(rawMessage([53, 1, 1, 12], 244)), null, 'option code without its length');
  t.is(decodeDhcp(rawMessage([53, 1, 1, 52, 1, 4, 255])), null, 'overload value out of range');
  t.is(decodeDhcp(rawMessage([53, 1, 1, 52, 2, 1, 1, 255])), null, 'overload with a bad length');
  const badFile = rawMessage([53, 1, 1, 52, 1, 1, 255]);
  badFile.fill(0x41, BOOTP_FILE_OFFSET, BOOTP_FILE_OFFSET + 128); // option 65, length 65, runs past the file field
  t.is(decodeDhcp(badFile), null, 'malformed options in an overloaded file field');
  const longHlen = rawMessage([53, 1, 1, 255]);
  longHlen[2] = 17;
  t.is(decodeDhcp(longHlen), null, 'hlen > 16');
});

test('option 121 matches the RFC 3442 examples', (t) => {
  const r = ip('192.168.77.1');
  const gw = [192, 168, 77, 1];
  const cases: Array<[string, number, number[]]> = [
    ['0.0.0.0', 0, [0]],
    ['10.0.0.0', 8, [8, 10]],
    ['10.0.0.0', 24, [24, 10, 0, 0]],
    ['10.17.0.0', 16, [16, 10, 17]],
    ['10.27.129.0', 24, [24, 10, 27, 129]],
    ['10.229.0.128', 25, [25, 10, 229, 0, 128]],
    ['10.198.122.47', 32, [32, 10, 198, 122, 47]],
  ];
  for (const [net, prefix, desc] of cases) {
    const b = encodeClasslessRoutes([{ network: ip(net), prefix, gateway: r }]);
    t.deepEqual([...b], [...desc, ...gw], `${net}/${prefix}`);
    t.deepEqual(decodeClasslessRoutes(b), [{ network: ip(net), prefix, gateway: r }]);
  }
  const all = encodeClasslessRoutes(cases.map(([net, prefix]) => ({ network: ip(net), prefix, gateway: r })));
  t.deepEqual(
    [...all],
    cases.flatMap(([, , d]) => [...d, ...gw]),
  );
  t.is(decodeClasslessRoutes(Buffer.from([33, 10, 0, 0, 0, 0, 1, 2, 3, 4])), null, 'prefix > 32');
  t.is(decodeClasslessRoutes(Buffer.from([24, 10, 0, 0, 1, 2])), null, 'truncated router');
});

test('reply frames carry correct IPv4 and UDP checksums', (t) => {
  const f = encodeDhcp(header(), [[53, u8(5)]], 548, FRAME_HEADROOM_BYTES)!;
  fillDhcpReplyHeaders(f, simMac(7), Buffer.from([2, 1, 2, 3, 4, 5]), ip('192.168.77.2'), ip('192.168.77.100'));
  const r = parseReply(f)!;
  t.true(r.ipChecksumOk);
  t.true(r.udpChecksumOk);
  t.not(f.readUInt16BE(14 + 20 + 6), 0, 'UDP checksum is filled in');
  t.is(r.srcPort, 67);
  t.is(r.dstPort, 68);
  f[14 + 20 + 8 + 50] ^= 1;
  t.false(parseReply(f)!.udpChecksumOk, 'a flipped bit is detected');
});

test('parseUdp: Ethernet padding accepted; fragments, short and non-UDP frames refused', (t) => {
  const f = clientFrame({ type: 1, mac: simMac(3), xid: 1 });
  t.truthy(parseUdp(Buffer.concat([f, Buffer.alloc(20)])), 'trailing padding');
  t.is(parseUdp(f.subarray(0, 40)), null);
  const frag = Buffer.from(f);
  frag.writeUInt16BE(0x2000, 14 + 6); // more fragments
  t.is(parseUdp(frag), null);
  const tcp = Buffer.from(f);
  tcp[14 + 9] = 6;
  t.is(parseUdp(tcp), null);
  const longUdp = Buffer.from(f);
  longUdp.writeUInt16BE(2000, 14 + 20 + 4);
  t.is(parseUdp(longUdp), null, 'UDP length beyond the IP packet');
});

test('ARP reply answers the requester with our MAC', (t) => {
  const req = Buffer.alloc(42);
  req.fill(0xff, 0, 6);
  simMac(9).copy(req, 6);
  req.writeUInt16BE(0x0806, 12);
  req.writeUInt16BE(1, 14);
  req.writeUInt16BE(0x0800, 16);
  req[18] = 6;
  req[19] = 4;
  req.writeUInt16BE(1, 20);
  simMac(9).copy(req, 22);
  req.writeUInt32BE(ip('192.168.77.100'), 28);
  req.writeUInt32BE(ip('192.168.77.2'), 38);
  const a = parseArp(req)!;
  const ours = Buffer.from([2, 9, 9, 9, 9, 9]);
  const rep = parseArp(buildArpReply(a, ours, ip('192.168.77.2')))!;
  t.is(rep.op, 2);
  t.deepEqual(rep.senderMac, ours);
  t.is(rep.senderIp, ip('192.168.77.2'));
  t.deepEqual(rep.targetMac, simMac(9));
  t.is(rep.targetIp, ip('192.168.77.100'));
});

// --- config ---------------------------------------------------------------------------------------

const FILE = '/etc/homewire/home.yaml';
const base = {
  subnet: '192.168.77.0/24',
  server_ip: '192.168.77.2',
  pool: '192.168.77.100-192.168.77.199',
  router: '192.168.77.1',
  dns: ['192.168.77.1'],
  domain: 'home.example',
  lease_seconds: 3600,
  reservations: [{ mac: '52:54:00:00:00:10', ip: '192.168.77.10' }],
  lease_db: 'leases.db',
};

test('config: the documented example parses, relative lease_db resolved against the config file', (t) => {
  const c = parseDhcpConfig(base, FILE);
  t.is(c.subnet, '192.168.77.0/24');
  t.deepEqual(c.pool, { start: '192.168.77.100', end: '192.168.77.199' });
  t.is(c.leaseDb, path.resolve('/etc/homewire/leases.db'));
  t.false(c.serveLocal);
  t.is(c.newLeasesPerSitePerMinute, 16);
  t.deepEqual(c.reservations, [{ mac: '52:54:00:00:00:10', ip: '192.168.77.10' }]);
  const c2 = parseDhcpConfig(
    {
      ...base,
      serve_local: true,
      rate_limit_per_site_per_minute: 100,
      routes: [{ destination: '10.0.0.0/8', gateway: '192.168.77.1' }],
    },
    FILE,
  );
  t.true(c2.serveLocal);
  t.is(c2.newLeasesPerSitePerMinute, 100);
  t.deepEqual(c2.classlessRoutes, [{ destination: '10.0.0.0/8', gateway: '192.168.77.1' }]);
});

test('config: errors name the key and say what to do', (t) => {
  const bad = (over: Record<string, unknown>, key: string, re: RegExp) => {
    const err = t.throws(() => parseDhcpConfig({ ...base, ...over }, FILE), { instanceOf: ConfigError }) as ConfigError;
    t.is(err.key, key, `${JSON.stringify(over)} -> ${err.message}`);
    t.regex(err.problem, re);
  };
  bad({ bogus: 1 }, 'dhcp.bogus', /unknown key/);
  bad({ subnet: '192.168.77.1/24' }, 'dhcp.subnet', /did you mean 192\.168\.77\.0\/24/);
  bad({ subnet: 'nope' }, 'dhcp.subnet', /ADDRESS\/PREFIX/);
  bad({ pool: '192.168.78.1-192.168.78.9' }, 'dhcp.pool', /outside the subnet/);
  bad({ pool: '192.168.77.199-192.168.77.100' }, 'dhcp.pool', /ends before it starts/);
  bad({ pool: '192.168.77.100' }, 'dhcp.pool', /FIRST-LAST/);
  bad({ server_ip: '192.168.77.150' }, 'dhcp.server_ip', /inside the pool/);
  bad({ server_ip: '10.1.1.1' }, 'dhcp.server_ip', /outside the subnet/);
  bad({ server_ip: '192.168.77.255' }, 'dhcp.server_ip', /broadcast/);
  bad({ router: '192.168.77.120' }, 'dhcp.router', /inside the pool/);
  bad({ lease_seconds: 5 }, 'dhcp.lease_seconds', /60/);
  bad({ lease_seconds: '1h' }, 'dhcp.lease_seconds', /whole number/);
  bad({ reservations: [{ mac: 'zz', ip: '192.168.77.10' }] }, 'dhcp.reservations[0].mac', /not a MAC/);
  bad(
    { reservations: [{ mac: '52:54:00:00:00:10', ip: '10.0.0.1' }] },
    'dhcp.reservations[0].ip',
    /outside the subnet/,
  );
  bad(
    {
      reservations: [
        { mac: '52:54:00:00:00:10', ip: '192.168.77.10' },
        { mac: '52:54:00:00:00:10', ip: '192.168.77.11' },
      ],
    },
    'dhcp.reservations[1].mac',
    /already reserved/,
  );
  bad(
    {
      reservations: [
        { mac: '52:54:00:00:00:10', ip: '192.168.77.10' },
        { mac: '52:54:00:00:00:11', ip: '192.168.77.10' },
      ],
    },
    'dhcp.reservations[1].ip',
    /already reserved/,
  );
  bad(
    { reservations: [{ mac: '52:54:00:00:00:10', ip: '192.168.77.10', name: 'x' }] },
    'dhcp.reservations[0].name',
    /unknown key/,
  );
  bad({ serve_local: 'yes' }, 'dhcp.serve_local', /true or false/);
  bad({ rate_limit_per_site_per_minute: 0 }, 'dhcp.rate_limit_per_site_per_minute', /whole number/);
  bad({ routes: [{ destination: '10.0.0.1/8', gateway: '192.168.77.1' }] }, 'dhcp.routes[0].destination', /host bits/);
  bad({ routes: [{ destination: '10.0.0.0/8', gateway: '10.0.0.1' }] }, 'dhcp.routes[0].gateway', /outside the subnet/);
  bad({ dns: ['x'] }, 'dhcp.dns[0]', /not an IPv4 address/);
  bad({ domain: 'bad_domain!' }, 'dhcp.domain', /not a DNS domain/);
  const routes = Array.from({ length: 32 }, (_, i) => ({ destination: `10.${i}.1.0/24`, gateway: '192.168.77.1' }));
  const dns = Array.from({ length: 16 }, (_, i) => `192.168.77.${20 + i}`);
  bad({ routes, dns, domain: `${'a'.repeat(60)}.${'b'.repeat(60)}.example` }, 'dhcp', /do not fit/);
  const e = t.throws(() => parseDhcpConfig('x', FILE), { instanceOf: ConfigError }) as ConfigError;
  t.is(e.key, 'dhcp');
  t.is((t.throws(() => parseDhcpConfig({ ...base, subnet: undefined }, FILE)) as ConfigError).key, 'dhcp.subnet');
  t.is(
    (t.throws(() => parseDhcpConfig({ ...base, bogus: 1 }, FILE, 'sites.home.dhcp')) as ConfigError).key,
    'sites.home.dhcp.bogus',
  );
});
