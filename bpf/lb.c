//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdp_lb: the sluice load balancer data plane.
 *
 * Per packet: parse Ethernet, IPv4/IPv6, TCP/UDP (or an ICMP too-big error
 * about a VIP flow), look up the VIP, reuse the backend of a tracked flow or
 * pick one from the VIP's Maglev ring, then encapsulate (ipip, gue) or
 * rewrite the MACs (dsr) and send the frame back out with XDP_TX. Everything that is
 * not for a VIP leaves untouched with XDP_PASS.
 *
 * This file steers (the VIP, the tracked flow or the ring's pick) and
 * holds the entry point; its maps are in maps.h, the parser in parse.h,
 * the rewrites in encap.h, packet capture in capture.h, and the egress
 * program for health probes (tc_probe) in tc_probe.c, which it includes.
 */
#include "helpers.h"
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include "sluice.h"
#include "flow.h"
#include "maps.h"
#include "parse.h"
#include "encap.h"
#include "capture.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* How many ring slots a new flow tries when its slot names an unusable
 * backend (between a backend failing and its ring being replaced). */
#define RING_PROBES 4
/* A UDP flow's idle timer is refreshed at most this often. */
#define UDP_REFRESH_NS 1000000000ULL

/* Slot of a VIP key in the VIP table; loader/viptable.go computes the same. */
static __always_inline __u32 vip_hash(const __u32 *w)
{
	return jhash_3words(w[0] ^ w[1], w[2] ^ w[3], w[4], 0);
}

static __always_inline struct vip_info *probe_vip(void *table, const struct vip_key *k)
{
	const __u32 *w = (const __u32 *)k; /* a vip_key is exactly five words */
	__u32 h = vip_hash(w);

	for (int i = 0; i < SLUICE_VIP_PROBES; i++) {
		__u32 slot = (h + i) & (SLUICE_VIP_TABLE - 1);
		struct vip_entry *e = bpf_map_lookup_elem(table, &slot);

		if (!e || e->key.family == 0)
			return NULL;
		const __u32 *ew = (const __u32 *)&e->key;

		if (ew[0] == w[0] && ew[1] == w[1] && ew[2] == w[2] && ew[3] == w[3] && ew[4] == w[4])
			return &e->info;
	}
	return NULL;
}

static __always_inline struct vip_info *find_vip(const struct pkt *p)
{
	struct vip_key k = {
		.port = p->key.dport,
		.proto = p->key.proto,
		.family = p->key.family,
	};
	__u32 zero = 0;
	void *table = bpf_map_lookup_elem(&vips, &zero);
	struct vip_info *vip;

	if (!table)
		return NULL;
	__builtin_memcpy(k.addr, p->key.dst, 16);
	vip = probe_vip(table, &k);
	if (vip)
		return vip;
	k.port = 0;
	return probe_vip(table, &k);
}


static __always_inline struct backend *usable_backend(__u32 idx, __u32 vip_id)
{
	struct backend *b = bpf_map_lookup_elem(&backends, &idx);

	if (!b || !(b->flags & SLUICE_BACKEND_USABLE) || b->vip_id != vip_id)
		return NULL;
	return b;
}

/* Reports a connection-table write to the daemon for flow sync. A full
 * ring buffer loses the event (counted); the flow itself is unaffected. */
static __always_inline void report_flow(const struct flow_key *key, __u32 backend)
{
	struct flow_event *e = bpf_ringbuf_reserve(&flow_events, sizeof(*e), 0);

	if (!e) {
		add(&stats, SLUICE_STAT_SYNC_LOST, 0);
		return;
	}
	e->key = *key;
	e->backend = backend;
	e->pad = 0;
	e->time_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, 0); /* adaptive wakeup: only an idle reader is woken */
}

/* Returns the backend for p, or NULL when the VIP has no usable one. */
static __always_inline struct backend *select_backend(struct pkt *p, const struct vip_info *vip,
						      const struct config *cfg, __u32 *idx)
{
	struct flow_state *st;
	struct backend *b = NULL;
	__u64 now = 0;

	struct flow4_key k4 = {
		.src = p->key.src[0],
		.dst = p->key.dst[0],
		.sport = p->key.sport,
		.dport = p->key.dport,
		.proto = p->key.proto,
	};
	int v4 = p->key.family == SLUICE_FAMILY_V4;

	if (!p->syn) {
		/* Two call sites, so the verifier can inline each lookup. */
		if (v4)
			st = bpf_map_lookup_elem(&flows4, &k4);
		else
			st = bpf_map_lookup_elem(&flows6, &p->key);
		if (st) {
			int expired = 0;

			if (p->key.proto == IPPROTO_UDP) {
				now = bpf_ktime_get_coarse_ns();
				expired = now - st->atime_ns > vip->udp_timeout_ns;
			}
			if (!expired) {
				b = usable_backend(st->backend, vip->id);
				if (b) {
					add(&stats, SLUICE_STAT_CT_HIT, 0);
					if (now - st->atime_ns > UDP_REFRESH_NS && now)
						st->atime_ns = now;
					*idx = st->backend;
					return b;
				}
			}
			add(&stats, SLUICE_STAT_CT_RESTEER, 0);
		} else {
			add(&stats, SLUICE_STAT_CT_MISS, 0);
		}
	}

	__u32 slot_key = vip->ring_slot;
	void *ring = bpf_map_lookup_elem(&rings, &slot_key);
	__u32 size = vip->ring_size;

	if (!ring || size == 0)
		return NULL;
	__u32 slot = flow_hash(&p->key, cfg->seed) % size;

	for (int i = 0; i < RING_PROBES; i++) {
		__u32 chunk = slot / SLUICE_RING_CHUNK;
		struct ring_chunk *rc = bpf_map_lookup_elem(ring, &chunk);

		if (!rc)
			return NULL;
		/* slot % SLUICE_RING_CHUNK < SLUICE_RING_CHUNK: in bounds by construction. */
		__u32 be = rc->slot[slot % SLUICE_RING_CHUNK];

		if (be == 0)
			return NULL; /* an empty ring: the VIP has no backend */
		b = usable_backend(be, vip->id);
		if (b) {
			*idx = be;
			break;
		}
		slot = slot + 1 == size ? 0 : slot + 1;
	}
	if (!b)
		return NULL;
	if (!p->icmp) {
		/* Only UDP entries age by time; TCP entries carry no clock read. */
		struct flow_state ns = { .backend = *idx, .atime_ns = now };

		if (p->key.proto == IPPROTO_UDP && !now)
			ns.atime_ns = bpf_ktime_get_coarse_ns();
		if (over_new_flow_limit(cfg->new_flow_limit, &flood)) {
			add(&stats, SLUICE_STAT_CT_FLOOD_SKIP, 0);
		} else {
			if (v4)
				bpf_map_update_elem(&flows4, &k4, &ns, BPF_ANY);
			else
				bpf_map_update_elem(&flows6, &p->key, &ns, BPF_ANY);
			if (cfg->flow_sync)
				report_flow(&p->key, *idx);
		}
	}
	return b;
}

/* Whether a packet that no VIP takes is for a VIP address and must not
 * reach the host's stack: only ICMP echo (unless turned off) and IPv6
 * neighbour discovery may. The config is read only for VIP addresses, so
 * other traffic pays one hash lookup. */
static __always_inline int vip_addr_closed(const struct pkt *p)
{
	__u32 zero = 0;

	if (p->key.family != SLUICE_FAMILY_V4 && p->key.family != SLUICE_FAMILY_V6)
		return 0; /* not parsed far enough to have an address */
	if (!is_vip_addr(p->key.dst, p->key.family))
		return 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->flags & SLUICE_CFG_VIP_OPEN)
		return 0;
	if (p->to_host == 2)
		return 0;
	if (p->to_host == 1)
		return cfg->flags & SLUICE_CFG_NO_ECHO;
	return 1;
}

/* Sends p to b (counted per backend and outcome), or drops it when the
 * VIP has no usable backend. Returns the XDP action. */
static __always_inline int send(struct xdp_md *ctx, struct ethhdr *eth, struct pkt *p, const struct vip_info *vip,
				struct backend *b, const struct config *cfg, __u32 idx, __u64 len)
{
	if (!b) {
		add(&stats, SLUICE_STAT_DROP_NO_BACKEND, len);
		return XDP_DROP;
	}

	if (vip->forward == SLUICE_FWD_DSR) {
		set_macs(eth, b, cfg, eth->h_proto);
		add(&backend_stats, idx, len);
		add(&stats, SLUICE_STAT_TX_DSR, len);
		return XDP_TX;
	}

	int err, gue = vip->forward == SLUICE_FWD_GUE;

	if (b->family != SLUICE_FAMILY_V6 && p->key.family != SLUICE_FAMILY_V4) {
		/* IPv6-in-IPv4 is not offered; the control plane refuses it. */
		add(&stats, SLUICE_STAT_DROP_UNSUPPORTED, len);
		return XDP_DROP;
	}
	if (gue)
		err = encap(ctx, p, b, cfg, 1, vip->gue_port);
	else
		err = encap(ctx, p, b, cfg, 0, 0);
	if (err) {
		add(&stats, SLUICE_STAT_DROP_ENCAP, len);
		return XDP_DROP;
	}
	add(&backend_stats, idx, len);
	add(&stats, gue ? SLUICE_STAT_TX_GUE : SLUICE_STAT_TX_IPIP, len);
	return XDP_TX;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;
	struct pkt p = {};
	enum verdict v;
	__u32 zero = 0, idx = 0;

	/* Bounds check: the Ethernet header must be in the packet before the
	 * EtherType is read. */
	if ((void *)(eth + 1) > data_end) {
		add(&stats, SLUICE_STAT_MALFORMED, len);
		return XDP_PASS;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		v = parse_ipv4(&p, eth + 1, data_end);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		v = parse_ipv6(&p, eth + 1, data_end);
	else
		v = outcome(&p, SLUICE_STAT_PASS_NON_IP, V_PASS);
	/* Malformed packets keep their own count; the stack drops them. */
	if (v == V_PASS && p.stat != SLUICE_STAT_MALFORMED && vip_addr_closed(&p)) {
		add(&stats, SLUICE_STAT_DROP_VIP_CLOSED, len);
		return XDP_DROP;
	}
	if (v != V_FORWARD) {
		add(&stats, p.stat, len);
		return v == V_PASS ? XDP_PASS : XDP_DROP;
	}

	struct vip_info *vip = find_vip(&p);

	if (!vip) {
		if (vip_addr_closed(&p)) {
			add(&stats, SLUICE_STAT_DROP_VIP_CLOSED, len);
			return XDP_DROP;
		}
		add(&stats, SLUICE_STAT_PASS_NON_VIP, len);
		return XDP_PASS;
	}

	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg)
		return XDP_PASS; /* cannot happen: a one-entry array */
	/* A frame addressed to another MAC reached us only because a switch
	 * flooded it (e.g. the pair's peer, whose port just went down): the
	 * node that owns the VIP forwards it, not us, or it would go twice. */
	if (!mac_equal(eth->h_dest, cfg->mac)) {
		add(&stats, SLUICE_STAT_PASS_OTHER_HOST, len);
		return XDP_PASS;
	}
	add(&vip_stats, vip->id, len);
	if (p.icmp)
		add(&stats, SLUICE_STAT_ICMP_TOO_BIG, len);
	struct backend *b = select_backend(&p, vip, cfg, &idx);
	struct capture_cfg *cc = capturing();

	if (cc)
		capture_frame(ctx, cc, vip->id, b ? idx : 0, SLUICE_CAPTURE_RX);
	int act = send(ctx, eth, &p, vip, b, cfg, idx, len);

	if (cc && act == XDP_TX)
		capture_frame(ctx, cc, vip->id, idx, SLUICE_CAPTURE_TX);
	return act;
}

/* The egress program, which shares this object's maps. */
#include "tc_probe.c"
