//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdp_decap: runs on a backend host. It strips an IPIP / IP6IP6 / IPv4-in-IPv6
 * outer header, or GUE's (variant 1: IP in UDP to a decap_gue_ports port),
 * addressed to one of the host's addresses (the decap_addrs map) and passes
 * the inner packet to the stack, for hosts without the ipip or fou modules.
 * Only outer sources inside a decap_allow prefix are decapsulated; the rest
 * are dropped and counted (DECAP_STAT_REFUSED).
 */
#include "helpers.h"
#include <linux/udp.h>
#include "sluice.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum decap_stat {
	DECAP_STAT_DECAPSULATED = 0,
	DECAP_STAT_PASSED,
	DECAP_STAT_REFUSED,
	DECAP_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr_key);
	__type(value, __u32);
} decap_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct decap_allow_key);
	__type(value, __u32);
} decap_allow SEC(".maps");

/* UDP destination ports (network order) that carry GUE to this host. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, __u32);
} decap_gue_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_STAT_MAX);
	__type(key, enum decap_stat);
	__type(value, struct counter);
} decap_stats SEC(".maps");


static __always_inline int count(__u32 idx, __u64 bytes, int action)
{
	struct counter *c = bpf_map_lookup_elem(&decap_stats, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	return action;
}

static __always_inline int local_addr(const void *addr, __u8 family)
{
	struct addr_key k = { .family = family };

	__builtin_memcpy(k.addr, addr, family == SLUICE_FAMILY_V4 ? 4 : 16);
	return bpf_map_lookup_elem(&decap_addrs, &k) != NULL;
}

static __always_inline int allowed_src(const void *addr, __u8 family)
{
	struct decap_allow_key k = {
		.prefixlen = 32 + (family == SLUICE_FAMILY_V4 ? 32 : 128),
		.family = family,
	};

	__builtin_memcpy(k.addr, addr, family == SLUICE_FAMILY_V4 ? 4 : 16);
	return bpf_map_lookup_elem(&decap_allow, &k) != NULL;
}

/* The EtherType of what a GUE datagram at l4 carries, or 0 when it is not
 * GUE to one of our ports in variant 1 (whose first nibble is the inner IP
 * version). Variant 0, with its own header, is left to the stack. */
static __always_inline __u16 gue_inner(void *l4, void *data_end)
{
	struct udphdr *uh = l4;
	__u8 *first = (void *)(uh + 1);

	/* Bounds check: the UDP header and the first byte of its payload
	 * must be in the packet before the port and the version are read. */
	if ((void *)(first + 1) > data_end)
		return 0;
	if (!bpf_map_lookup_elem(&decap_gue_ports, &uh->dest))
		return 0;
	if (*first >> 4 == 4)
		return bpf_htons(ETH_P_IP);
	if (*first >> 4 == 6)
		return bpf_htons(ETH_P_IPV6);
	return 0;
}

/* The EtherType of the inner packet after an outer IP header whose next
 * protocol is nexthdr and whose payload starts at l4; *outer grows by what
 * GUE adds. 0: not encapsulated. */
static __always_inline __u16 inner_proto(__u8 nexthdr, void *l4, void *data_end, __u32 *outer)
{
	__u16 proto;

	if (nexthdr == IPPROTO_IPIP)
		return bpf_htons(ETH_P_IP);
	if (nexthdr == IPPROTO_IPV6)
		return bpf_htons(ETH_P_IPV6);
	if (nexthdr != IPPROTO_UDP)
		return 0;
	proto = gue_inner(l4, data_end);
	if (proto)
		*outer += sizeof(struct udphdr);
	return proto;
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;
	__u32 outer;
	__u16 proto;

	/* Bounds check: the Ethernet header must be in the packet before the
	 * EtherType is read. */
	if ((void *)(eth + 1) > data_end)
		return count(DECAP_STAT_PASSED, len, XDP_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		/* Bounds check: the outer IPv4 header must be in the packet
		 * before its fields are read. */
		if ((void *)(ip + 1) > data_end)
			return count(DECAP_STAT_PASSED, len, XDP_PASS);
		outer = ip->ihl * 4;
		proto = inner_proto(ip->protocol, (void *)ip + outer, data_end, &outer);
		if (!proto || ip->version != 4 || outer < sizeof(*ip) ||
		    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
		    !local_addr(&ip->daddr, SLUICE_FAMILY_V4))
			return count(DECAP_STAT_PASSED, len, XDP_PASS);
		if (!allowed_src(&ip->saddr, SLUICE_FAMILY_V4))
			return count(DECAP_STAT_REFUSED, len, XDP_DROP);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		/* Bounds check: the outer IPv6 header must be in the packet
		 * before its fields are read. */
		if ((void *)(ip6 + 1) > data_end)
			return count(DECAP_STAT_PASSED, len, XDP_PASS);
		outer = sizeof(*ip6);
		proto = inner_proto(ip6->nexthdr, ip6 + 1, data_end, &outer);
		if (!proto || !local_addr(&ip6->daddr, SLUICE_FAMILY_V6))
			return count(DECAP_STAT_PASSED, len, XDP_PASS);
		if (!allowed_src(&ip6->saddr, SLUICE_FAMILY_V6))
			return count(DECAP_STAT_REFUSED, len, XDP_DROP);
	} else {
		return count(DECAP_STAT_PASSED, len, XDP_PASS);
	}

	struct ethhdr e = *eth;

	e.h_proto = proto;
	if (bpf_xdp_adjust_head(ctx, outer))
		return count(DECAP_STAT_PASSED, len, XDP_PASS);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	/* Bounds check: the moved Ethernet header must still be inside the
	 * shrunk packet before it is written. */
	if ((void *)(eth + 1) > data_end)
		return count(DECAP_STAT_PASSED, len, XDP_DROP);
	*eth = e;
	return count(DECAP_STAT_DECAPSULATED, len, XDP_PASS);
}
