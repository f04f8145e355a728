/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The flow hash and the new-flow guard, shared by xdp_lb and the floor
 * programs that benchmarks compare it with (bpf/floor.c). */
#ifndef SLUICE_FLOW_H
#define SLUICE_FLOW_H

#include "helpers.h"
#include "sluice.h"

/* The ring slot hash of a flow; loader/flowhash.go computes the same. */
static __always_inline __u32 flow_hash(const struct flow_key *k, __u32 seed)
{
	__u32 ports = ((__u32)k->sport << 16) | k->dport;

	if (k->family == SLUICE_FAMILY_V4)
		return jhash_3words(k->src[0], k->dst[0], ports, seed ^ k->proto);
	__u32 h = jhash_4words(k->src, seed);

	h = jhash_4words(k->dst, h);
	return jhash_3words(ports, k->proto, 0, h);
}

/* The new-flow guard: allows limit table inserts per CPU per
 * window of at least a second. The clock is read when a window opens, then
 * only once its budget is spent, every 256th skipped flow: flows under the
 * limit cost no clock read. */
static __always_inline int over_new_flow_limit(__u32 limit, void *flood_map)
{
	__u32 zero = 0;
	struct flood_state *f;

	if (!limit)
		return 0;
	f = bpf_map_lookup_elem(flood_map, &zero);
	if (!f)
		return 0;
	if (f->count < limit) {
		if (f->count++ == 0)
			f->window_ns = bpf_ktime_get_coarse_ns(); /* once per window */
		return 0;
	}
	if ((f->skipped++ & 255) == 0) {
		__u64 now = bpf_ktime_get_coarse_ns();

		if (now - f->window_ns >= 1000000000ULL) {
			f->window_ns = now;
			f->count = 1;
			f->skipped = 0;
			return 0;
		}
	}
	return 1;
}

#endif
