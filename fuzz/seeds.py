#!/usr/bin/env python3
"""Writes the seed inputs of the vnet_reader and vnet_writer fuzz targets (see README.md):
well-formed TCP and UDP super-segments and runs of segments, IPv4 and IPv6, TUN and TAP
(with and without a VLAN tag), so the fuzzer starts past the header checks; and those of
data_batch: batches of messages of lengths around the AEAD's block and chunk boundaries,
for each backend; and vnet_writer's rule-* inputs, one run of segments per merge rule,
which stay in the corpus whatever cmin keeps. Run from fuzz/: python3 seeds.py; then let
the fuzzer grow the corpus, `cmin` it, and delete the seed-* files of the vnet_ targets
(cmin keeps those that add coverage, under their hashes)."""
import itertools
import struct

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s

def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s

def ip4(proto, payload_len, ident=1, frag=0x4000, opts=b""):
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | (5 + len(opts) // 4), 0, 20 + len(opts) + payload_len,
                    ident, frag, 64, proto, 0, bytes([10, 77, 0, 2]), bytes([10, 77, 0, 1])) + opts
    c = 0xFFFF - csum(h)
    return h[:10] + struct.pack("!H", c) + h[12:]

def ip6(proto, payload_len):
    src = bytes([0xfd, 0x77] + [0] * 13 + [2])
    dst = bytes([0xfd, 0x77] + [0] * 13 + [1])
    return struct.pack("!IHBB", 6 << 28, payload_len, proto, 64) + src + dst

def pseudo(ip, proto, l4_len):
    if ip[0] >> 4 == 4:
        return csum(ip[12:20] + struct.pack("!HH", proto, l4_len))
    return csum(ip[8:40] + struct.pack("!IxxxB", l4_len, proto))

def tcp(seq, payload, flags=0x10, opts=b"", window=512, urgent=0):
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, (5 + len(opts) // 4) << 4, flags,
                       window, 0, urgent) + opts + payload

def ts(v):
    """TCP options: two NOPs and a timestamp."""
    return b"\x01\x01\x08\x0a" + struct.pack("!II", v, 7)

def udp(payload):
    return struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0) + payload

def packet(v6, proto, l4, full_csum, seq=0, ident=None, frag=0x4000, ip_opts=b""):
    """An IP packet around l4 (a TCP or UDP header and payload) with its checksum either
    complete or partial (the pseudo-header sum only, as the kernel leaves it)."""
    ident = 1 + seq if ident is None else ident
    ip = ip6(proto, len(l4)) if v6 else ip4(proto, len(l4), ident, frag, ip_opts)
    ps = pseudo(ip, proto, len(l4))
    at = 16 if proto == 6 else 6
    if full_csum:
        c = 0xFFFF - fold(ps + csum(l4))
        if proto == 17 and c == 0:
            c = 0xFFFF
    else:
        c = ps
    return ip + l4[:at] + struct.pack("!H", c) + l4[at + 2:]

def eth(vlan, v6, vid=7):
    h = bytes([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2])
    if vlan:
        h += struct.pack("!HH", 0x8100, vid)
    return h + struct.pack("!H", 0x86DD if v6 else 0x0800)

def vnet(flags, gso, hdr_len, gso_size, csum_start, csum_offset):
    return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, csum_start, csum_offset)

def entry(p, partial=False):
    """One packet of a vnet_writer input: its partial flag, length and bytes."""
    return bytes([int(partial)]) + struct.pack("<H", len(p)) + p

def body(n, seed):
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))

reader, writer = [], []
for tap in (False, True):
    for vlan in ((False, True) if tap else (False,)):
        for v6 in (False, True):
            link = eth(vlan, v6) if tap else b""
            l3 = len(link) + (40 if v6 else 20)
            for proto in (6, 17):
                l4h = 20 if proto == 6 else 8
                data = body(3 * 1000 + 300, 1)
                l4 = tcp(1000, data) if proto == 6 else udp(data)
                gso = (4 if v6 else 1) if proto == 6 else 5
                ctl = int(tap) | 2 | (1 << 2) | (2 << 5)
                frame = vnet(1, gso, l3 + l4h, 1000, l3, 16 if proto == 6 else 6)
                reader.append(bytes([ctl]) + frame + link + packet(v6, proto, l4, False))
                # The same as one packet with a partial checksum, and with a full one.
                single = link + packet(v6, proto, l4[:l4h + 500], False)
                reader.append(bytes([int(tap) | 2]) + vnet(1, 0, 0, 0, l3, 16 if proto == 6 else 6) + single)
                reader.append(bytes([int(tap) | 0x80]) + vnet(0, 0, 0, 0, 0, 0) + link + packet(v6, proto, l4[:l4h + 500], True))
                # A run of four segments of one flow, with full checksums or partial
                # ones (each packet's flag byte), for a writer that trusts checksums or
                # not (control bit 1), as they are or to be made consistent (bit 4).
                for full, trust, fix in itertools.product((True, False), (0, 2), (0, 0x10)):
                    w = bytes([int(tap) | trust | (2 << 2) | fix])
                    for i in range(4):
                        seg = body(700 if i < 3 else 300, 9)
                        l4 = tcp(1000 + 700 * i, seg) if proto == 6 else udp(seg)
                        p = link + packet(v6, proto, l4, full, seq=i)
                        w += entry(p, not full)
                    writer.append(w)

# Super-segments as Linux sends them: TCP with timestamps (a 32-byte header) and PSH on
# the last segment, IPv4 with DF and without.
for tap, v6, df in itertools.product((False, True), (False, True), (0x4000, 0)):
    if v6 and not df:
        continue
    link = eth(False, v6) if tap else b""
    l3 = len(link) + (40 if v6 else 20)
    l4 = tcp(1000, body(3 * 1448 + 100, 3), 0x18, ts(5))
    frame = vnet(1, 4 if v6 else 1, l3 + 32, 1448, l3, 16)
    ctl = int(tap) | 2 | (1 << 2) | (2 << 5)
    reader.append(bytes([ctl]) + frame + link + packet(v6, 6, l4, False, ident=77, frag=df))

def segment(seq, size, v6=False, tap=False, udp_=False, vlan=None, ident=1, frag=0x4000,
            ip_opts=b"", opts=b"", window=512, flags=0x10, urgent=0, byte12=None,
            full=True, udp_len=None, udp_sum0=False, trail=b"", bad=False):
    """One TCP segment or UDP datagram of the writer seeds' flow, with any of its fields
    set: the element of a run that the run's rule is about."""
    data = body(size, 9)
    if udp_:
        l4 = udp(data)
        if udp_len is not None:
            l4 = l4[:4] + struct.pack("!H", udp_len) + l4[6:]
    else:
        l4 = tcp(seq, data, flags, opts, window, urgent)
        if byte12 is not None:
            l4 = l4[:12] + bytes([byte12]) + l4[13:]
    link = eth(vlan is not None, v6, vlan or 0) if tap else b""
    p = link + packet(v6, 17 if udp_ else 6, l4, full, ident=ident, frag=frag, ip_opts=ip_opts)
    if udp_sum0:
        at = len(link) + (40 if v6 else 20) + 6
        p = p[:at] + b"\0\0" + p[at + 2:]
    if bad:
        p = p[:-1] + bytes([p[-1] ^ 1])
    return p + trail

def writer_input(entries, tap=False, trust=0):
    """A vnet_writer input: control byte (offset 16), then (packet, partial) entries."""
    return bytes([int(tap) | trust | (2 << 2)]) + b"".join(entry(p, pa) for p, pa in entries)

def run(n=4, sizes=None, tap=False, trust=0, partial=lambda i: False, **fields):
    """A run of n segments of one flow. Each keyword is a field of `segment`, given as a
    function of the segment's index; sizes are 700 bytes, 300 for the last, and IPv4 ids
    go up by one, unless given."""
    sizes = sizes or (lambda i: 700 if i < n - 1 else 300)
    fields.setdefault("ident", lambda i: 1 + i)
    entries, seq = [], 1000
    for i in range(n):
        kw = {k: f(i) for k, f in fields.items()}
        entries.append((segment(seq, sizes(i), tap=tap, full=not partial(i), **kw), partial(i)))
        seq += sizes(i)
    return writer_input(entries, tap, trust)

def in_turn(*packets, tap=False):
    """A writer input of whole packets, in the order given."""
    return writer_input([(p, False) for p in packets], tap)

hop_by_hop = ip6(0, 8 + 20) + bytes([6, 0, 1, 4, 0, 0, 0, 0]) + tcp(9, b"")
fragment = ip4(17, 8 + 16, ident=50, frag=0x2000) + udp(body(16, 1))
always = lambda v: (lambda i: v)
at2 = lambda v, other: (lambda i: v if i == 2 else other)

# The merge rules, one input each: what the writer must merge, and what it must not. Kept
# in the corpus under these names (cmin keeps only inputs that add coverage, and these
# are what make a broken rule fail the replay test).
rules = {
    "options-equal": run(opts=always(ts(5))),
    "options-differ": run(opts=lambda i: ts(5 + (i == 2))),
    "no-df-ids-step": run(frag=always(0), ident=lambda i: 300 + i),
    "df-fixed-id": run(ident=always(300)),
    "no-df-fixed-id": run(frag=always(0), ident=always(300)),
    "ids-step-by-2": run(ident=lambda i: 300 + 2 * i),
    "df-ids-fixed-then-step": run(ident=lambda i: [300, 300, 302, 303][i]),
    "df-missing-on-one": run(frag=at2(0, 0x4000), ident=lambda i: 300 + i),
    "ipv4-options": run(ip_opts=always(b"\0\0\0\0")),
    "tcp-byte-12-differs": run(byte12=at2(0x51, 0x50)),
    "psh-before-last": run(flags=lambda i: 0x18 if i == 1 else 0x10),
    "psh-on-last": run(flags=lambda i: 0x18 if i == 3 else 0x10),
    "no-ack": run(flags=always(0)),
    "window-differs": run(window=at2(513, 512)),
    "ece": run(flags=at2(0x50, 0x10)),
    "fin-on-last": run(flags=lambda i: 0x11 if i == 3 else 0x10),
    "urg": run(flags=lambda i: 0x30 if i == 1 else 0x10, urgent=lambda i: 9 if i == 1 else 0),
    "longer-segment": run(sizes=lambda i: [700, 704, 700, 300][i]),
    "short-segment-in-the-middle": run(sizes=lambda i: [700, 300, 700, 300][i]),
    "bad-checksum": run(bad=at2(True, False)),
    "bad-checksum-trusted": run(trust=2, bad=at2(True, False)),
    "trailing-bytes-trusted": run(trust=2, trail=lambda i: b"\0" * 4 if i == 3 else b""),
    "partial-and-full": run(partial=lambda i: i % 2 == 1),
    "vlan-differs": run(tap=True, vlan=at2(8, 7)),
    "udp": run(udp_=always(True)),
    "udp-ipv6-tap": run(tap=True, udp_=always(True), v6=always(True)),
    "udp-sum-0-trusted": run(trust=2, udp_=always(True), udp_sum0=at2(True, False)),
    "udp-length-wrong-trusted": run(trust=2, udp_=always(True), udp_len=at2(9, None)),
    "udp-longer-datagram": run(udp_=always(True), sizes=lambda i: [700, 700, 800, 300][i]),
    "udp-short-datagram-in-the-middle": run(udp_=always(True),
                                            sizes=lambda i: [700, 300, 700, 300][i]),
    "alone-between": in_turn(segment(1000, 700, ident=1), segment(1700, 700, ident=2, flags=0x11),
                             segment(1700, 300, ident=2)),
    "pure-ack-between": in_turn(segment(1000, 700, ident=1), segment(1700, 0, ident=2),
                                segment(1700, 300, ident=2)),
    "fragment-between": in_turn(segment(1000, 700, ident=1), fragment,
                                segment(1700, 700, ident=2), segment(2400, 300, ident=3)),
    "ipv6-extension-between": in_turn(segment(1000, 700, v6=True), hop_by_hop,
                                      segment(1700, 700, v6=True), segment(2400, 300, v6=True)),
    "bad-then-retransmitted": in_turn(segment(1000, 700, ident=1),
                                      segment(1700, 700, ident=2, bad=True),
                                      segment(1700, 700, ident=2), segment(2400, 300, ident=3)),
    "70-segments": run(n=70, sizes=always(8)),
    "70-segments-ipv6-tap": run(n=70, sizes=always(8), tap=True, v6=always(True)),
    "62-segments-past-64-kib": run(n=62, sizes=always(1100)),
    "lone-partial": run(n=1, partial=always(True)),
    "lone-partial-ipv6-tap": run(n=1, tap=True, partial=always(True), v6=always(True)),
}

def batch(backend, lens, edits=b""):
    out = bytes([(backend << 6) | len(lens)])
    for i, n in enumerate(lens):
        out += struct.pack("<H", n) + bytes((i * 13 + k) & 0xFF for k in range(n))
    return out + edits

data_batch = []
for backend in (0, 1, 2):
    data_batch.append(batch(backend, [1420] * 20))
    data_batch.append(batch(backend, [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256,
                                      257, 511, 512, 513, 1000, 1419, 1420]))
    data_batch.append(batch(backend, [40, 52, 60] + [1420] * 15 + [100],
                            b"\x10\x00\x01\x00\x40\x80"))
    data_batch.append(batch(backend, [700] * 33, b"\xff\x00\x01"))

for name, seeds in (("vnet_reader", reader), ("vnet_writer", writer), ("data_batch", data_batch)):
    for i, s in enumerate(seeds):
        with open("corpus/%s/seed-%02d" % (name, i), "wb") as f:
            f.write(s)
    print(name, len(seeds), "seeds")
for name, s in rules.items():
    with open("corpus/vnet_writer/rule-%s" % name, "wb") as f:
        f.write(s)
print("vnet_writer", len(rules), "rules")
