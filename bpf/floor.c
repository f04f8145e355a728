//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Floor programs for `make bench` (never attached by the daemon). Each one
 * touches exactly the memory one path of xdp_lb must touch, and nothing
 * else, so that sluice's cost on that path is read as a ratio to it:
 *  - xdp_floor_hit:  one lookup that hits an LRU hash of sluice's size and key;
 *  - xdp_floor_syn:  one 5-tuple hash, one read from a ring-sized array and an
 *                    insert under the same new-flow guard;
 *  - xdp_floor_miss: the miss lookup, then the SYN floor.
 * Each then sends the frame back as the mode under test does: floor_encap 0
 * swaps the MACs (dsr), 1 pushes an outer IPv4 header (ipip), 2 an outer
 * IPv4 and a UDP header (gue). Only IPv4 TCP is parsed: the benchmark's.
 */
#include "helpers.h"
#include <linux/tcp.h>
#include <linux/udp.h>
#include "sluice.h"
#include "flow.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set at load time. */
const volatile __u32 floor_encap = 0;
const volatile __u32 floor_new_flow_limit = 125000;
const volatile __u32 floor_ring_size = SLUICE_DEFAULT_RING;

/* The same table as xdp_lb's flows4: size, key, value and flags. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_DEFAULT_FLOWS);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct flow4_key);
	__type(value, struct flow_state);
} floor_flows4 SEC(".maps");

/* A ring as xdp_lb holds one: packed chunks of backend indices. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (SLUICE_DEFAULT_RING + SLUICE_RING_CHUNK - 1) / SLUICE_RING_CHUNK);
	__type(key, __u32);
	__type(value, struct ring_chunk);
} floor_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flood_state);
} floor_flood SEC(".maps");

/* Reads the flow of an IPv4 TCP frame into key (for the hash) and k4 (the
 * table key), as xdp_lb's parser does. */
static __always_inline int parse(struct xdp_md *ctx, struct flow_key *key, struct flow4_key *k4)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	/* Bounds check: the Ethernet and fixed IPv4 headers must be in the
	 * packet before the protocol and addresses are read. */
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_TCP)
		return -1;
	struct tcphdr *th = (void *)ip + ip->ihl * 4;

	/* Bounds check: the TCP header (after any IPv4 options) must be in
	 * the packet before the ports are read. */
	if ((void *)(th + 1) > data_end)
		return -1;
	key->family = SLUICE_FAMILY_V4;
	key->proto = IPPROTO_TCP;
	key->src[0] = k4->src = ip->saddr;
	key->dst[0] = k4->dst = ip->daddr;
	key->sport = k4->sport = th->source;
	key->dport = k4->dport = th->dest;
	k4->proto = IPPROTO_TCP;
	return 0;
}

/* Sends the frame back: MACs swapped, then the outer headers the mode adds
 * (a fixed outer destination: what to write, not where from, is the cost). */
static __always_inline int forward(struct xdp_md *ctx)
{
	const int push = floor_encap == 0 ? 0 : floor_encap == 1 ? sizeof(struct iphdr) : sizeof(struct iphdr) + sizeof(struct udphdr);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ethhdr e;

	/* Bounds check: the Ethernet and IPv4 headers must be in the packet
	 * before the MACs and the IP length are read. */
	if ((void *)(eth + 1) + sizeof(struct iphdr) > data_end)
		return XDP_DROP;
	__builtin_memcpy(e.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(e.h_source, eth->h_dest, ETH_ALEN);
	e.h_proto = bpf_htons(ETH_P_IP);
	if (!push) {
		*eth = e;
		return XDP_TX;
	}
	__u16 len = bpf_ntohs(((struct iphdr *)(eth + 1))->tot_len);

	if (bpf_xdp_adjust_head(ctx, -push))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	/* Bounds check: the new Ethernet, IPv4 and (gue) UDP headers must lie
	 * inside the grown packet before they are written. */
	if ((void *)(ip + 1) + sizeof(struct udphdr) > data_end)
		return XDP_DROP;
	*eth = e;
	struct iphdr o = {
		.version = 4,
		.ihl = 5,
		.tot_len = bpf_htons(len + push),
		.ttl = 64,
		.protocol = floor_encap == 1 ? IPPROTO_IPIP : IPPROTO_UDP,
		.saddr = bpf_htonl(0xac100001),
		.daddr = bpf_htonl(0x0a010001),
	};
	o.check = ipv4_csum(&o);
	*ip = o;
	if (floor_encap == 2) {
		struct udphdr u = { .source = bpf_htons(49152), .dest = bpf_htons(6080), .len = bpf_htons(len + 8) };

		*(struct udphdr *)(ip + 1) = u;
	}
	return XDP_TX;
}

/* The SYN floor after parsing: hash, ring read, guarded insert. */
static __always_inline int new_flow(struct xdp_md *ctx, const struct flow_key *key, const struct flow4_key *k4)
{
	__u32 slot = flow_hash(key, 1) % floor_ring_size;
	__u32 chunk = slot / SLUICE_RING_CHUNK;
	struct ring_chunk *rc = bpf_map_lookup_elem(&floor_ring, &chunk);

	if (!rc)
		return XDP_DROP;
	/* slot % SLUICE_RING_CHUNK < SLUICE_RING_CHUNK: in bounds by construction. */
	struct flow_state st = { .backend = rc->slot[slot % SLUICE_RING_CHUNK] };

	if (!over_new_flow_limit(floor_new_flow_limit, &floor_flood))
		bpf_map_update_elem(&floor_flows4, k4, &st, BPF_ANY);
	return forward(ctx);
}

SEC("xdp")
int xdp_floor_hit(struct xdp_md *ctx)
{
	struct flow_key key = {};
	struct flow4_key k4 = {};

	if (parse(ctx, &key, &k4))
		return XDP_PASS;
	if (!bpf_map_lookup_elem(&floor_flows4, &k4))
		return XDP_DROP; /* the benchmark inserts its one flow first */
	return forward(ctx);
}

SEC("xdp")
int xdp_floor_syn(struct xdp_md *ctx)
{
	struct flow_key key = {};
	struct flow4_key k4 = {};

	if (parse(ctx, &key, &k4))
		return XDP_PASS;
	return new_flow(ctx, &key, &k4);
}

SEC("xdp")
int xdp_floor_miss(struct xdp_md *ctx)
{
	struct flow_key key = {};
	struct flow4_key k4 = {};

	if (parse(ctx, &key, &k4))
		return XDP_PASS;
	if (bpf_map_lookup_elem(&floor_flows4, &k4))
		return forward(ctx);
	return new_flow(ctx, &key, &k4);
}
