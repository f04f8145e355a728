/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The parser: Ethernet, IPv4/IPv6, TCP/UDP and the ICMP errors about a
 * VIP flow, into struct pkt; every bounds check says what it guards. */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

enum verdict {
	V_FORWARD,
	V_PASS,
	V_DROP,
};

/* What the parser learnt about one packet. */
struct pkt {
	struct flow_key key; /* client -> VIP direction */
	__u32 ip_len;        /* length of the IP packet from its own header */
	__u32 stat;          /* outcome when the verdict is not V_FORWARD */
	__u8 tos;
	__u8 df;             /* IPv4 don't-fragment bit was set */
	__u8 syn;
	__u8 icmp;           /* an ICMP too-big error about a VIP flow */
	__u8 to_host;        /* ICMP echo (1) or IPv6 neighbour discovery (2) */
	__u8 udp_csum0;      /* UDP over IPv4 without a checksum (0 in the header) */
};

struct ports {
	__u16 src;
	__u16 dst;
};

static __always_inline void add(void *map, __u32 idx, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline enum verdict outcome(struct pkt *p, __u32 stat, enum verdict v)
{
	p->stat = stat;
	return v;
}

static __always_inline int is_vip_addr(const __u32 *addr, __u8 family)
{
	struct addr_key k = { .family = family };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&vip_addrs, &k) != NULL;
}

/* Reads the ports (and for TCP the SYN flag) of the L4 header at l4,
 * which must end by ip_end, the end of the IP packet by its own length. */
static __always_inline int parse_l4(void *l4, void *data_end, void *ip_end, struct pkt *p)
{
	if (p->key.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		/* Bounds check: the fixed TCP header must be in the packet
		 * (and within the IP packet) before ports and flags are read. */
		if ((void *)(th + 1) > data_end || (void *)(th + 1) > ip_end || th->doff < 5)
			return -1;
		p->key.sport = th->source;
		p->key.dport = th->dest;
		p->syn = th->syn;
		return 0;
	}
	struct udphdr *uh = l4;

	/* Bounds check: the UDP header must be in the packet (and within
	 * the IP packet) before the ports are read. */
	if ((void *)(uh + 1) > data_end || (void *)(uh + 1) > ip_end)
		return -1;
	p->key.sport = uh->source;
	p->key.dport = uh->dest;
	p->udp_csum0 = uh->check == 0;
	return 0;
}

/* Fills p from the quoted header of an ICMP error: the quoted packet went
 * VIP -> client, so the flow is the reverse of it. */
static __always_inline enum verdict quoted_flow(struct pkt *p, __u8 proto, void *l4, void *data_end)
{
	struct ports *pt = l4;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return outcome(p, SLUICE_STAT_PASS_UNSUPPORTED, V_PASS);
	/* Bounds check: an ICMP error quotes at least 8 bytes of L4 header;
	 * the two ports must be inside the packet before they are read. */
	if ((void *)(pt + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	p->key.proto = proto;
	p->key.sport = pt->dst;
	p->key.dport = pt->src;
	p->icmp = 1;
	return V_FORWARD;
}

static __always_inline enum verdict parse_icmp4(struct pkt *p, void *l4, void *data_end)
{
	struct icmp_hdr *ic = l4;

	/* Bounds check: the 8-byte ICMP header must be in the packet before
	 * type and code are read. */
	if ((void *)(ic + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	if (ic->type == ICMP_ECHO)
		p->to_host = 1;
	if (ic->type != ICMP_DEST_UNREACH || ic->code != ICMP_FRAG_NEEDED)
		return outcome(p, SLUICE_STAT_PASS_UNSUPPORTED, V_PASS);

	struct iphdr *in = (void *)(ic + 1);

	/* Bounds check: the quoted IPv4 header must be in the packet before
	 * its fields are read. */
	if ((void *)(in + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	__u32 hlen = in->ihl * 4;

	if (in->version != 4 || hlen < sizeof(*in))
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	/* The error is about a packet we (the VIP) sent: it must be addressed
	 * to the quoted source, or it is not ours to steer. */
	if (in->saddr != p->key.dst[0])
		return outcome(p, SLUICE_STAT_PASS_NON_VIP, V_PASS);
	p->key.src[0] = in->daddr;
	p->key.dst[0] = in->saddr;
	return quoted_flow(p, in->protocol, (void *)in + hlen, data_end);
}

static __always_inline enum verdict parse_icmp6(struct pkt *p, void *l4, void *data_end)
{
	struct icmp_hdr *ic = l4;

	/* Bounds check: the 8-byte ICMPv6 header must be in the packet before
	 * type and code are read. */
	if ((void *)(ic + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	if (ic->type == ICMPV6_ECHO_REQUEST)
		p->to_host = 1;
	/* Router and neighbour solicitations and advertisements, redirects. */
	if (ic->type >= NDISC_ROUTER_SOLICITATION && ic->type <= NDISC_REDIRECT)
		p->to_host = 2;
	if (ic->type != ICMPV6_PKT_TOOBIG || ic->code != 0)
		return outcome(p, SLUICE_STAT_PASS_UNSUPPORTED, V_PASS);

	struct ipv6hdr *in = (void *)(ic + 1);

	/* Bounds check: the quoted IPv6 header must be in the packet before
	 * its addresses are read. */
	if ((void *)(in + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	if (in->version != 6)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	/* Addressed to the quoted source (the VIP), or not ours to steer. */
	if (in->saddr.in6_u.u6_addr32[0] != p->key.dst[0] || in->saddr.in6_u.u6_addr32[1] != p->key.dst[1] ||
	    in->saddr.in6_u.u6_addr32[2] != p->key.dst[2] || in->saddr.in6_u.u6_addr32[3] != p->key.dst[3])
		return outcome(p, SLUICE_STAT_PASS_NON_VIP, V_PASS);
	copy_addr6(p->key.src, &in->daddr);
	copy_addr6(p->key.dst, &in->saddr);
	return quoted_flow(p, in->nexthdr, in + 1, data_end);
}

static __always_inline enum verdict parse_ipv4(struct pkt *p, void *l3, void *data_end)
{
	struct iphdr *ip = l3;

	/* Bounds check: the fixed IPv4 header must be in the packet before
	 * any field is read. */
	if ((void *)(ip + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	__u32 hlen = ip->ihl * 4; /* 0..60: a 4-bit field, so the verifier knows the range */
	__u32 tot = bpf_ntohs(ip->tot_len);

	if (ip->version != 4 || hlen < sizeof(*ip) || tot < hlen || tot > (__u64)(data_end - l3))
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);

	p->key.family = SLUICE_FAMILY_V4;
	p->key.proto = ip->protocol;
	p->key.src[0] = ip->saddr;
	p->key.dst[0] = ip->daddr;
	p->ip_len = tot;
	p->tos = ip->tos;
	p->df = !!(ip->frag_off & bpf_htons(IP_DF));

	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		if (is_vip_addr(p->key.dst, SLUICE_FAMILY_V4))
			return outcome(p, SLUICE_STAT_DROP_FRAGMENT, V_DROP);
		return outcome(p, SLUICE_STAT_PASS_NON_VIP, V_PASS);
	}

	/* Options, if any, sit between the fixed header and L4: skip them. */
	void *l4 = l3 + hlen;

	switch (ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (parse_l4(l4, data_end, l3 + tot, p))
			return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
		return V_FORWARD;
	case IPPROTO_ICMP:
		return parse_icmp4(p, l4, data_end);
	}
	return outcome(p, SLUICE_STAT_PASS_UNSUPPORTED, V_PASS);
}

static __always_inline enum verdict parse_ipv6(struct pkt *p, void *l3, void *data_end)
{
	struct ipv6hdr *ip6 = l3;

	/* Bounds check: the fixed IPv6 header must be in the packet before
	 * any field is read. */
	if ((void *)(ip6 + 1) > data_end)
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
	__u32 tot = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);

	if (ip6->version != 6 || tot > (__u64)(data_end - l3))
		return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);

	p->key.family = SLUICE_FAMILY_V6;
	p->key.proto = ip6->nexthdr;
	copy_addr6(p->key.src, &ip6->saddr);
	copy_addr6(p->key.dst, &ip6->daddr);
	p->ip_len = tot;
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);

	switch (ip6->nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (parse_l4(ip6 + 1, data_end, l3 + tot, p))
			return outcome(p, SLUICE_STAT_MALFORMED, V_PASS);
		return V_FORWARD;
	case IPPROTO_ICMPV6:
		return parse_icmp6(p, ip6 + 1, data_end);
	case IPPROTO_FRAGMENT:
		if (is_vip_addr(p->key.dst, SLUICE_FAMILY_V6))
			return outcome(p, SLUICE_STAT_DROP_FRAGMENT, V_DROP);
		return outcome(p, SLUICE_STAT_PASS_NON_VIP, V_PASS);
	}
	return outcome(p, SLUICE_STAT_PASS_UNSUPPORTED, V_PASS);
}

#endif /* SLUICE_PARSE_H */
