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
 * tc_probe: on egress, sends health probes that the daemon marked (check
 * via vip) to the backend the mark names, as xdp_lb sends that VIP's data.
 */
#include "helpers.h"
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include "sluice.h"
#include "flow.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* How many ring slots a new flow tries when its slot names an unusable
 * backend (between a backend failing and its ring being replaced). */
#define RING_PROBES 4
/* A UDP flow's idle timer is refreshed at most this often. */
#define UDP_REFRESH_NS 1000000000ULL

/* The VIP table: one open-addressed array, swapped whole through this
 * one-entry map-in-map. Array lookups are nearly free where a hash map
 * lookup costs tens of nanoseconds, and the whole-table swap is atomic. */
struct vip_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLUICE_VIP_TABLE);
	__type(key, __u32);
	__type(value, struct vip_entry);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct vip_table);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr_key);
	__type(value, __u32);
} vip_addrs SEC(".maps");

/* Template of one ring; BPF_F_INNER_MAP lets each ring have its own size. */
struct ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (SLUICE_DEFAULT_RING + SLUICE_RING_CHUNK - 1) / SLUICE_RING_CHUNK);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, struct ring_chunk);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLUICE_RING_SLOTS);
	__type(key, __u32);
	__array(values, struct ring);
} rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLUICE_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* Connection tables, one per family: per-CPU LRU lists, so inserts on one
 * core never contend with another core's. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_DEFAULT_FLOWS);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct flow4_key);
	__type(value, struct flow_state);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_DEFAULT_FLOWS);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct flow_key);
	__type(value, struct flow_state);
} flows6 SEC(".maps");

/* Connection-table writes for flow sync, read by the daemon (config.flow_sync). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} flow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct counter);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct counter);
} backend_stats SEC(".maps");

_Static_assert(SLUICE_STAT_MAX <= SLUICE_STAT_SLOTS, "more outcomes than counter slots");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_STAT_SLOTS);
	__type(key, enum sluice_stat);
	__type(value, struct counter);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flood_state);
} flood SEC(".maps");


/* Packet capture: its filter, its per-CPU rate limit, and the frames. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct capture_cfg);
} capture SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct capture_state);
} capture_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} capture_events SEC(".maps");

/* BTF anchor: bpf2go emits Go constants only for enums present in BTF, and
 * these enums appear in no map declaration (their fields are __u8); clang
 * also emits the inner map's value type only as a forward declaration
 * unless something holds it by value. A ring buffer declares no value
 * type, so struct flow_event is anchored here too. */
struct sluice_btf_anchor {
	enum sluice_forward forward;
	enum sluice_family family;
	enum sluice_backend_flags backend_flags;
	enum sluice_cfg cfg;
	struct vip_entry vip_entry;
	struct ring_chunk ring_chunk;
	struct flow_event flow_event;
	struct capture_rec capture_rec;
	enum sluice_capture_dir capture_dir;
	enum sluice_probe probe;
} sluice_btf_anchor __attribute__((unused));

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

#ifdef SLUICE_NO_CAPTURE
/* The build make bench compares with: no capture branch at all. */
static __always_inline struct capture_cfg *capturing(void) { return NULL; }
static __always_inline void capture_frame(struct xdp_md *ctx, struct capture_cfg *cc, __u32 vip_id, __u32 backend, __u8 dir) {}
#else
/* The capture's filter while a capture holds its lease, else NULL. With
 * capture off a VIP packet pays one inlined array lookup and one
 * predictable branch; the clock is read only while it is on. */
static __always_inline struct capture_cfg *capturing(void)
{
	__u32 zero = 0;
	struct capture_cfg *cc = bpf_map_lookup_elem(&capture, &zero);

	if (!cc || !cc->on)
		return NULL;
	if (bpf_ktime_get_coarse_ns() >= cc->until_ns)
		return NULL;
	return cc;
}

/* The capture's rate limit: cfg->rate frames per CPU per second. */
static __always_inline int capture_allowed(const struct capture_cfg *cc)
{
	__u32 zero = 0;
	struct capture_state *s = bpf_map_lookup_elem(&capture_state, &zero);
	__u64 now = bpf_ktime_get_coarse_ns();

	if (!s)
		return 0;
	if (now - s->window_ns >= 1000000000ULL) {
		s->window_ns = now;
		s->count = 0;
	}
	if (s->count >= cc->rate)
		return 0;
	s->count++;
	return 1;
}

/* Copies the frame, as it is now, to capture_events if the capture's
 * filter takes it and its rate limit allows. */
static __always_inline void capture_frame(struct xdp_md *ctx, struct capture_cfg *cc, __u32 vip_id, __u32 backend, __u8 dir)
{
	if (!(cc->dirs & dir) || (cc->vip_id != SLUICE_CAPTURE_ANY_VIP && cc->vip_id != vip_id) ||
	    (cc->backend && cc->backend != backend))
		return;
	if (!capture_allowed(cc)) {
		add(&stats, SLUICE_STAT_CAPTURE_LIMITED, 0);
		return;
	}
	struct capture_rec *r = bpf_ringbuf_reserve(&capture_events, sizeof(*r), 0);

	if (!r) {
		add(&stats, SLUICE_STAT_CAPTURE_LOST, 0);
		return;
	}
	__u32 len = ctx->data_end - ctx->data;
	__u64 n = len < cc->snaplen ? len : cc->snaplen;

	/* Bounds check: the copy must fit r->data (SLUICE_CAPTURE_SNAP bytes,
	 * a power of two) and be at least a byte, as the helper requires:
	 * the mask gives the verifier that range; n is 64-bit so that a spill
	 * to the stack keeps it. */
	if (n < 1 || n > SLUICE_CAPTURE_SNAP)
		n = SLUICE_CAPTURE_SNAP;
	n = ((n - 1) & (SLUICE_CAPTURE_SNAP - 1)) + 1;
	if (bpf_xdp_load_bytes(ctx, 0, r->data, n)) {
		bpf_ringbuf_discard(r, 0);
		return;
	}
	r->time_ns = bpf_ktime_get_ns();
	r->len = len;
	r->caplen = n;
	r->vip_id = vip_id;
	r->backend = backend;
	r->ifindex = ctx->ingress_ifindex;
	r->session = cc->session;
	r->dir = dir;
	r->pad[0] = r->pad[1] = r->pad[2] = 0;
	bpf_ringbuf_submit(r, 0);
}
#endif

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

/* Set by the loader: the interface xdp_lb is attached to. A probe that
 * tc_probe meets on another device's egress (loopback, when the VIP is a
 * local address) is sent out of it. */
volatile const __u32 probe_ifindex = 0;

static __always_inline int probe_drop(__u64 len)
{
	add(&stats, SLUICE_STAT_PROBE_DROP, len);
	return TC_ACT_SHOT;
}

/* How many bytes encapsulating to b adds after the Ethernet header
 * (tc_probe; xdp_lb's encap grows the head by constants). */
static __always_inline int outer_len(const struct backend *b, const int gue)
{
	int ip = b->family == SLUICE_FAMILY_V6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);

	return ip + (gue ? sizeof(struct udphdr) : 0);
}

/* Writes the outer headers to b (IPIP with gue 0, or GUE) in the room
 * outer_len(b, gue) bytes long that tc_probe made after the Ethernet
 * header at data. */
static __always_inline int outer(void *data, void *data_end, const struct pkt *p, const struct backend *b,
				 const struct config *cfg, const int gue, __u16 gue_port)
{
	if (b->family == SLUICE_FAMILY_V6)
		return outer_v6(data, data_end, p, b, cfg, gue, gue_port);
	return outer_v4(data, data_end, p, b, cfg, gue, gue_port);
}

/* Rewrites a probe for b as xdp_lb's send() rewrites its VIP's data:
 * the MACs for dsr, else an outer header made in room after the MAC
 * header (the offload state stays the inner packet's: a checksum the
 * kernel still has to complete is completed there). */
static __always_inline int probe_rewrite(struct __sk_buff *skb, const struct pkt *p, const struct vip_info *vip,
					 const struct backend *b, const struct config *cfg)
{
	if (vip->forward == SLUICE_FWD_DSR) {
		struct ethhdr *eth = (void *)(long)skb->data;

		/* Bounds check: the Ethernet header must be in the packet
		 * before its addresses are rewritten. */
		if ((void *)(eth + 1) > (void *)(long)skb->data_end)
			return -1;
		set_macs(eth, b, cfg, eth->h_proto);
		return 0;
	}
	if (b->family != SLUICE_FAMILY_V6 && p->key.family != SLUICE_FAMILY_V4)
		return -1; /* IPv6-in-IPv4, as in send() */

	int gue = vip->forward == SLUICE_FWD_GUE;
	__u64 flags = b->family == SLUICE_FAMILY_V6 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV4;

	if (gue)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	if (bpf_skb_adjust_room(skb, outer_len(b, gue), BPF_ADJ_ROOM_MAC, flags))
		return -1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (gue)
		return outer(data, data_end, p, b, cfg, 1, vip->gue_port);
	return outer(data, data_end, p, b, cfg, 0, 0);
}

SEC("tc")
int tc_probe(struct __sk_buff *skb)
{
	if (skb->mark >> SLUICE_PROBE_TAG_SHIFT != SLUICE_PROBE_TAG)
		return TC_ACT_OK; /* not a probe: one compare */
	__u32 idx = skb->mark & 0xffff, zero = 0;
	__u64 len = skb->len;
	struct pkt p = {};
	enum verdict v = V_PASS;

	/* Make the whole probe linear, so that its IP length can be checked
	 * against the data (a TCP segment's payload sits in page fragments),
	 * and ours to write (it is a clone of the one TCP keeps to resend).
	 * Probes are small; the copy is cheap. */
	if (bpf_skb_pull_data(skb, skb->len))
		return probe_drop(len);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	/* Bounds check: the Ethernet header must be in the packet before the
	 * EtherType is read. */
	if ((void *)(eth + 1) > data_end)
		return probe_drop(len);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		v = parse_ipv4(&p, eth + 1, data_end);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		v = parse_ipv6(&p, eth + 1, data_end);

	struct vip_info *vip = v == V_FORWARD && !p.icmp ? find_vip(&p) : NULL;
	struct backend *b = bpf_map_lookup_elem(&backends, &idx);
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	/* Only TCP or UDP to a VIP that the marked backend serves is sent:
	 * a mark cannot send anything else anywhere. The backend need not be
	 * usable; a probe is how a down backend comes back. */
	if (!vip || !b || b->family == 0 || b->vip_id != vip->id || !cfg || probe_rewrite(skb, &p, vip, b, cfg))
		return probe_drop(len);
	add(&stats, SLUICE_STAT_PROBE_TX, len);
	if (skb->ifindex != probe_ifindex) {
		/* Sent on from loopback, it meets tc_probe again on the
		 * interface's egress: unmarked, it passes there as it is. */
		skb->mark = 0;
		return bpf_redirect(probe_ifindex, 0);
	}
	return TC_ACT_OK;
}
