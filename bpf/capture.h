/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice capture: copies of the frames of a VIP or backend into a ring
 * buffer, as received and as sent, while a capture holds its lease. */
#ifndef SLUICE_CAPTURE_H
#define SLUICE_CAPTURE_H

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

#endif /* SLUICE_CAPTURE_H */
