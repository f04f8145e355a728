/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Sending to a backend: the MAC rewrite (dsr), and the outer headers of
 * ipip and gue with their per-flow entropy and checksums. */
#ifndef SLUICE_ENCAP_H
#define SLUICE_ENCAP_H

/* A cheap per-flow value for the outer source address, flow label and
 * GUE source port, so that backends' RSS spreads encapsulated traffic: the
 * client address words folded with the client port, multiplied (Knuth's
 * golden ratio) and folded again, so that every bit of the result depends
 * on the port and on every address word. */
static __always_inline __u32 encap_entropy(const struct flow_key *k)
{
	__u32 x = (k->src[0] ^ k->src[1] ^ k->src[2] ^ k->src[3] ^ k->sport) * 0x9e3779b1;

	return x ^ (x >> 16);
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b && *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline void set_macs(struct ethhdr *eth, const struct backend *b,
				     const struct config *cfg, __u16 proto)
{
	__builtin_memcpy(eth->h_dest, b->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->mac, ETH_ALEN);
	eth->h_proto = proto;
}

/* What an inner IP packet adds, unfolded, to a checksum that covers it
 * whole (GUE's outer UDP checksum), from its headers alone: a packet
 * whose checksums are valid sums to the complement of what they cover
 * besides it, the L4 pseudo-header (ICMPv4 and the IPv4 header: nothing).
 * Returns -1 when that does not hold: UDP over IPv4 without a checksum. */
static __always_inline int inner_csum(const struct pkt *p, void *inner, void *data_end, __u64 *sum)
{
	if (p->key.family == SLUICE_FAMILY_V4) {
		struct iphdr *ip = inner;

		/* Bounds check: the inner IPv4 header must be in the packet
		 * before its addresses and protocol are read. */
		if ((void *)(ip + 1) > data_end)
			return -1;
		*sum = 0;
		if (ip->protocol == IPPROTO_ICMP)
			return 0;
		if (p->udp_csum0)
			return -1;
		__u64 ph = (__u64)ip->saddr + ip->daddr + bpf_htons(ip->protocol) +
			   bpf_htons(p->ip_len - ip->ihl * 4);
		*sum = (__u16)~csum_fold64(ph);
		return 0;
	}
	struct ipv6hdr *ip6 = inner;
	const __u32 *w = inner;
	__u64 hdr = 0, ph = 0;

	/* Bounds check: the whole inner IPv6 header is summed; it must be in
	 * the packet before it is read. */
	if ((void *)(ip6 + 1) > data_end)
		return -1;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip6) / 4); i++)
		hdr += w[i];
#pragma unroll
	for (int i = 2; i < (int)(sizeof(*ip6) / 4); i++)
		ph += w[i]; /* the addresses */
	ph += bpf_htons(p->ip_len - sizeof(*ip6)) + bpf_htons(ip6->nexthdr);
	*sum = hdr + (__u16)~csum_fold64(ph);
	return 0;
}

/* Writes GUE's UDP header (variant 1: the IP packet follows at once).
 * The source port is drawn from the flow's entropy h (encap_entropy, which
 * the outer header used too), in the ephemeral range, so that a backend's
 * RSS spreads flows; addrs is the sum of the outer addresses. The checksum
 * is valid, or 0 where inner_csum cannot tell the sum. */
static __always_inline void gue_udp(struct udphdr *uh, void *data_end, const struct pkt *p, __u16 port, __u64 addrs,
				    __u32 h)
{
	__u16 len = bpf_htons(p->ip_len + sizeof(*uh));
	struct udphdr u = {
		.source = bpf_htons(0xc000 | (h & 0x3fff)),
		.dest = port,
		.len = len,
	};
	__u64 inner;

	if (!inner_csum(p, uh + 1, data_end, &inner)) {
		u.check = ~csum_fold64(addrs + bpf_htons(IPPROTO_UDP) + len + u.source + u.dest + len + inner);
		if (!u.check)
			u.check = 0xffff; /* 0 means "no checksum" */
	}
	*uh = u;
}

/* Writes the Ethernet, outer IPv4 and (with gue, a constant at each call
 * site, so the bounds check below has a constant offset) GUE's UDP header
 * in front of p's IP packet, in room the caller made at data: XDP grows
 * the head, tc_probe the room after the MAC header; both leave the
 * Ethernet header first and the inner packet after the room. */
static __always_inline int outer_v4(void *data, void *data_end, const struct pkt *p, const struct backend *b,
				    const struct config *cfg, const int gue, __u16 gue_port)
{
	const int udp = gue ? sizeof(struct udphdr) : 0;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	/* Bounds check: after the room was made, the Ethernet and outer
	 * IPv4 headers (and GUE's UDP header) must lie inside the packet
	 * before they are written. */
	if ((void *)(ip + 1) + udp > data_end)
		return -1;
	set_macs(eth, b, cfg, bpf_htons(ETH_P_IP));

	__u32 h = encap_entropy(&p->key);
	struct iphdr o = {
		.version = 4,
		.ihl = 5,
		.tos = p->tos,
		.tot_len = bpf_htons(p->ip_len + sizeof(struct iphdr) + udp),
		.frag_off = p->df ? bpf_htons(IP_DF) : 0,
		.ttl = 64,
		.protocol = gue ? IPPROTO_UDP : IPPROTO_IPIP,
		.saddr = (cfg->encap_src4 & bpf_htonl(0xffff0000)) |
			 bpf_htonl(h & 0xffff),
		.daddr = b->addr[0],
	};
	o.check = ipv4_csum(&o);
	*ip = o;
	if (gue)
		gue_udp((void *)(ip + 1), data_end, p, gue_port, (__u64)o.saddr + o.daddr, h);
	return 0;
}

/* The IPv6 form of outer_v4. */
static __always_inline int outer_v6(void *data, void *data_end, const struct pkt *p, const struct backend *b,
				    const struct config *cfg, const int gue, __u16 gue_port)
{
	const int udp = gue ? sizeof(struct udphdr) : 0;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	/* Bounds check: after the room was made, the Ethernet and outer
	 * IPv6 headers (and GUE's UDP header) must lie inside the packet
	 * before they are written. */
	if ((void *)(ip6 + 1) + udp > data_end)
		return -1;
	set_macs(eth, b, cfg, bpf_htons(ETH_P_IPV6));

	__u32 h = encap_entropy(&p->key);
	__u8 next = p->key.family == SLUICE_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	struct ipv6hdr o = {
		.version = 6,
		.priority = p->tos >> 4,
		.flow_lbl = { ((p->tos & 0xf) << 4) | ((h >> 16) & 0xf), (h >> 8) & 0xff, h & 0xff },
		.payload_len = bpf_htons(p->ip_len + udp),
		.nexthdr = gue ? IPPROTO_UDP : next,
		.hop_limit = 64,
	};
	__builtin_memcpy(&o.saddr, cfg->encap_src6, 12);
	__builtin_memcpy((__u8 *)&o.saddr + 12, &h, 4);
	__builtin_memcpy(&o.daddr, b->addr, 16);
	*ip6 = o;
	if (gue) {
		const __u32 *w = (const __u32 *)&o.saddr; /* saddr and daddr: 8 words */
		__u64 addrs = 0;

#pragma unroll
		for (int i = 0; i < 8; i++)
			addrs += w[i];
		gue_udp((void *)(ip6 + 1), data_end, p, gue_port, addrs, h);
	}
	return 0;
}

/* Encapsulates p to b: IPIP (gue 0) or GUE, in the backend's family,
 * which is tested once per packet: each branch grows the head by a
 * constant. */
static __always_inline int encap(struct xdp_md *ctx, const struct pkt *p, const struct backend *b,
				 const struct config *cfg, const int gue, __u16 gue_port)
{
	const int udp = gue ? sizeof(struct udphdr) : 0;

	if (b->family == SLUICE_FAMILY_V6) {
		if (bpf_xdp_adjust_head(ctx, 0 - (int)sizeof(struct ipv6hdr) - udp))
			return -1;
		return outer_v6((void *)(long)ctx->data, (void *)(long)ctx->data_end, p, b, cfg, gue, gue_port);
	}
	if (bpf_xdp_adjust_head(ctx, 0 - (int)sizeof(struct iphdr) - udp))
		return -1;
	return outer_v4((void *)(long)ctx->data, (void *)(long)ctx->data_end, p, b, cfg, gue, gue_port);
}

#endif /* SLUICE_ENCAP_H */
