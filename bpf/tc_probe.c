//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc_probe: on egress, sends health probes that the daemon marked (check
 * via vip) to the backend the mark names, as xdp_lb sends that VIP's data.
 * It is part of lb.c's object (lb.c includes it last), so that it shares
 * xdp_lb's maps and helpers.
 */

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
