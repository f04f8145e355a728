//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Helper XDP programs for tests and benchmarks (never attached by the daemon):
 *  - xdp_pass:    pass-through, so a veth peer receives XDP_TX frames;
 *  - xdp_reflect: the trivial reflector benchmarks compare against;
 *  - xdp_sink:    counts and drops what comes back;
 *  - xdp_gen:     a live-frames traffic generator writing a template frame.
 */
#include "helpers.h"
#include "sluice.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define GEN_MAX 128

/* The frame the generator writes on every run: live-frame pages are
 * recycled without copying the input again, and the receiver may have
 * rewritten it in place. */
struct gen_template {
	__u8 data[GEN_MAX]; /* the whole frame: generated frames are GEN_MAX bytes */
	__u32 flows;    /* distinct clients to cycle through (0: always the template) */
	__u16 addr_off; /* offset of the 32-bit word of the client address to vary */
	__u16 port_off; /* offset of the client port */
	/* flow n uses port + (n mod 2^port_shift) and address + (n >> port_shift):
	 * 0 gives every flow an address of its own */
	__u32 port_shift;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_template);
} gen_tmpl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counter);
} tool_stats SEC(".maps");

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 tmp[ETH_ALEN];

	/* Bounds check: both MAC addresses must be in the packet before they
	 * are swapped. */
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct counter *c = bpf_map_lookup_elem(&tool_stats, &zero);

	if (c) {
		c->packets++;
		c->bytes += ctx->data_end - ctx->data;
	}
	return XDP_DROP;
}

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_template *t = bpf_map_lookup_elem(&gen_tmpl, &zero);
	struct counter *c = bpf_map_lookup_elem(&tool_stats, &zero);

	if (!t || !c)
		return XDP_ABORTED;
	/* Bounds check: the generator always writes a full GEN_MAX bytes, so
	 * the frame handed to it must be at least that long. */
	if (data + GEN_MAX > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->data, GEN_MAX);

	__u64 seq = c->packets++;

	if (t->flows) {
		__u32 flow = seq % t->flows;
		__u32 ao = t->addr_off;
		__u32 po = t->port_off;
		__u32 shift = t->port_shift & 31;

		/* Bounds check: both offsets come from a map, so the verifier
		 * needs them capped before it allows packet writes at them. */
		if (ao > GEN_MAX - 4 || po > GEN_MAX - 2)
			return XDP_ABORTED;
		__u8 *a = data + ao;
		__u8 *pt = data + po;

		/* Bounds check: the packet holds GEN_MAX bytes (checked above),
		 * restated for the verifier at these variable offsets. */
		if ((void *)(a + 4) > data_end || (void *)(pt + 2) > data_end)
			return XDP_ABORTED;
		__u32 addr = ((__u32)a[0] << 24 | (__u32)a[1] << 16 | (__u32)a[2] << 8 | a[3]) + (flow >> shift);
		__u16 port = ((__u16)pt[0] << 8 | pt[1]) + (flow & ((1u << shift) - 1));

		a[0] = addr >> 24;
		a[1] = addr >> 16;
		a[2] = addr >> 8;
		a[3] = addr;
		pt[0] = port >> 8;
		pt[1] = port;
	}
	return XDP_TX;
}
