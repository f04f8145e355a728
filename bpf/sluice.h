/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sluice.h: the single source of truth for every map key and value that the
 * data plane and the control plane share. bpf2go generates the Go types in
 * lb_bpfel.go from the BTF of these declarations; nothing is declared twice.
 *
 * Addresses are stored as four __u32 words holding the address bytes in
 * network order (an IPv4 address uses word 0, the rest are zero).
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <linux/types.h>

#define SLUICE_MAX_VIPS 1024
/* Backend index 0 is reserved: a ring slot holding 0 means "no backend". */
#define SLUICE_MAX_BACKENDS 4096
/* Default ring size; each ring is an inner array sized at creation. */
#define SLUICE_DEFAULT_RING 65537
/* Two ring slots per VIP (double buffer): vip_info.ring_slot names the active one. */
/* A ring is stored packed, SLUICE_RING_CHUNK backend indices per array
 * element: array elements are rounded up to 8 bytes, so one __u32 per
 * element would take twice, and a __u16 four times, the memory (and cache)
 * this does. Backend indices fit in 16 bits. */
#define SLUICE_RING_CHUNK 4
#define SLUICE_RING_SLOTS (SLUICE_MAX_VIPS * 2)
/* VIPs live in an open-addressed table of this many slots (a power of two,
 * at most 1/4 full) that the control plane rebuilds and swaps whole. A VIP
 * sits at most SLUICE_VIP_PROBES slots after its hash slot. */
#define SLUICE_VIP_TABLE 4096
#define SLUICE_VIP_PROBES 8
/* Default connection table size (entries); the loader may override it. */
#define SLUICE_DEFAULT_FLOWS (1 << 20)

enum sluice_family {
	SLUICE_FAMILY_V4 = 4,
	SLUICE_FAMILY_V6 = 6,
};

enum sluice_forward {
	SLUICE_FWD_IPIP = 1,
	SLUICE_FWD_DSR = 2,
	/* GUE variant 1: the IP packet in UDP to vip_info.gue_port. */
	SLUICE_FWD_GUE = 3,
};

enum sluice_backend_flags {
	/* The backend may receive packets: new flows via the ring, tracked flows via the table. */
	SLUICE_BACKEND_USABLE = 1 << 0,
	/* Informational: weight 0, kept out of the ring, tracked flows continue. */
	SLUICE_BACKEND_DRAINING = 1 << 1,
};

/* Global outcome and event counters, indexed into the stats map. Each packet
 * lands in exactly one outcome (PASS_*, MALFORMED, TX_*, DROP_*); the CT_* and
 * ICMP_* entries count events on top of that. */
enum sluice_stat {
	SLUICE_STAT_PASS_NON_IP = 0,
	SLUICE_STAT_PASS_NON_VIP,
	SLUICE_STAT_PASS_UNSUPPORTED,
	SLUICE_STAT_MALFORMED,
	SLUICE_STAT_TX_IPIP,
	SLUICE_STAT_TX_DSR,
	SLUICE_STAT_DROP_NO_BACKEND,
	SLUICE_STAT_DROP_FRAGMENT,
	SLUICE_STAT_DROP_UNSUPPORTED,
	SLUICE_STAT_DROP_ENCAP,
	SLUICE_STAT_CT_HIT,
	SLUICE_STAT_CT_MISS,
	SLUICE_STAT_CT_RESTEER,
	SLUICE_STAT_ICMP_TOO_BIG,
	SLUICE_STAT_CT_FLOOD_SKIP,
	SLUICE_STAT_SYNC_LOST, /* flow sync on, but the event ring buffer was full */
	SLUICE_STAT_PASS_OTHER_HOST, /* a VIP packet in a frame for another MAC (flooded) */
	SLUICE_STAT_DROP_VIP_CLOSED, /* for a VIP address, on a port or protocol no VIP serves */
	SLUICE_STAT_TX_GUE,
	SLUICE_STAT_CAPTURE_LOST,    /* a frame to capture, but the capture ring buffer was full */
	SLUICE_STAT_CAPTURE_LIMITED, /* a frame to capture, over the capture's rate limit */
	SLUICE_STAT_PROBE_TX,        /* a health probe sent through the forwarding path (tc_probe) */
	SLUICE_STAT_PROBE_DROP,      /* a marked probe whose backend is not one of its VIP's, or unsendable */
	SLUICE_STAT_MAX,
};

/* Health checks through the forwarding path (check via vip): the daemon
 * marks a probe's socket with SO_MARK (SLUICE_PROBE_TAG << 16) | index, and
 * tc_probe, on the interface's egress (and loopback's, for a VIP that is a
 * local address), sends each marked packet to backend index as data
 * traffic of its VIP goes there: encapsulated, or with the MACs rewritten. */
enum sluice_probe {
	SLUICE_PROBE_TAG = 0x51ce,
	SLUICE_PROBE_TAG_SHIFT = 16,
};

/* Capacity of the global counter array: room for outcomes added later, so
 * that a new counter does not change the pinned map's layout (an upgrade
 * adopts the maps instead of refusing them). */
enum {
	SLUICE_STAT_SLOTS = 64,
};

/* Key of the vips map. port is in network byte order; port 0 matches every
 * port of the address and protocol. */
struct vip_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

/* One element of a ring array: slots chunk*4 .. chunk*4+3. */
struct ring_chunk {
	__u16 slot[SLUICE_RING_CHUNK];
};

/* What the data plane knows of one VIP. It lives in the VIP table, which is
 * replaced whole: ring_slot and ring_size always change together, which is
 * what makes a ring swap atomic. */
struct vip_info {
	__u32 id;        /* index into vip_stats; 0 .. SLUICE_MAX_VIPS-1 */
	__u32 ring_slot; /* active slot in rings: id*2 or id*2+1 */
	__u32 ring_size; /* number of entries of the active ring (prime) */
	__u8 forward;    /* enum sluice_forward */
	__u8 pad;
	__u16 gue_port;  /* network order; the UDP destination for forward gue */
	__u64 udp_timeout_ns; /* idle time after which a UDP flow is re-hashed */
};

/* One slot of the VIP table; family 0 marks an empty slot. */
struct vip_entry {
	struct vip_key key;
	__u32 pad;
	struct vip_info info;
};

/* Value of the backends array (index 1 .. SLUICE_MAX_BACKENDS-1). A backend
 * entry belongs to one VIP, so its counters are per VIP and backend. */
struct backend {
	__u32 addr[4];
	__u32 vip_id; /* owning VIP; a tracked flow is reused only if it matches */
	__u8 family;  /* enum sluice_family */
	__u8 flags;   /* enum sluice_backend_flags */
	__u8 mac[6];  /* next-hop MAC (the backend itself for dsr) */
};

/* A flow, always in client -> VIP direction; the key of the IPv6
 * connection table. */
struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; /* network byte order */
	__u16 dport; /* network byte order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/* Key of the IPv4 connection table: a compact form of flow_key, as
 * shorter keys hash and compare faster. */
struct flow4_key {
	__u32 src;
	__u32 dst;
	__u16 sport; /* network byte order */
	__u16 dport; /* network byte order */
	__u8 proto;
	__u8 pad[3];
};

struct flow_state {
	__u32 backend; /* index into backends */
	__u32 pad;
	__u64 atime_ns; /* coarse monotonic time the flow was last refreshed */
};

/* The single entry of the config array. */
struct config {
	__u32 seed;         /* flow hash seed: equal seeds pick equal slots */
	__u32 encap_src4;   /* IPIP outer source prefix /16, network order */
	__u32 encap_src6[4]; /* IPv6 outer source prefix /96 */
	__u8 mac[6];        /* our interface MAC: source of every sent frame */
	__u8 flags;         /* SLUICE_CFG_* (in what was padding: the layout is unchanged) */
	__u8 pad;
	/* New-flow guard: past this many new table entries per second on one
	 * CPU, new flows are steered by the ring without being written to the
	 * table (SYN floods cannot churn out established flows). 0: no limit. */
	__u32 new_flow_limit;
	/* 1: report every connection-table write to flow_events (LB pairs). */
	__u32 flow_sync;
};

/* config.flags. A packet for a VIP address that no VIP serves (its port
 * or protocol) is dropped, so that the LB host's own services (sshd, the
 * HA port) never answer on a VIP; ICMP echo and IPv6 neighbour discovery
 * still reach the host's stack. */
enum sluice_cfg {
	SLUICE_CFG_VIP_OPEN = 1, /* pass it to the host's stack instead */
	SLUICE_CFG_NO_ECHO = 2,  /* drop ICMP echo to VIP addresses too */
};

/* A connection-table write (a new flow, or a re-steered one), reported
 * through the flow_events ring buffer so that a peer can copy it. */
struct flow_event {
	struct flow_key key;
	__u32 backend; /* index into backends */
	__u32 pad;
	__u64 time_ns; /* bpf_ktime_get_ns() at the write */
};

/* Per-CPU state of the new-flow guard. */
struct flood_state {
	__u64 window_ns; /* start of the current window (at least one second) */
	__u32 count;     /* new flows written in this window */
	__u32 skipped;   /* new flows not written since the window began */
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Key of the vip_addrs map: any address that has at least one VIP. Used to
 * drop fragments addressed to a VIP (they carry no port to match on). */
struct addr_key {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* Packet capture (`sluice capture`): frames of one VIP (or all) and one
 * backend (or all), as received and as sent, copied to the capture_events
 * ring buffer while capture.on is set. */
#define SLUICE_CAPTURE_SNAP 2048 /* most bytes copied of one frame */
#define SLUICE_CAPTURE_ANY_VIP 0xffffffff

enum sluice_capture_dir {
	SLUICE_CAPTURE_RX = 1, /* as received, before the rewrite */
	SLUICE_CAPTURE_TX = 2, /* as sent, after it */
};

/* The single entry of the capture map, written by `sluice capture`, which
 * holds it as a lease: past until_ns the capture is off, so a capturing
 * process that dies leaves nothing running. */
struct capture_cfg {
	__u32 on;       /* 0: off, and a VIP packet pays one branch */
	__u32 vip_id;   /* vip_info.id to capture, or SLUICE_CAPTURE_ANY_VIP */
	__u32 backend;  /* backend index to capture; 0: any (and frames with none) */
	__u32 dirs;     /* enum sluice_capture_dir bits */
	__u32 snaplen;  /* bytes to copy of each frame, 1 .. SLUICE_CAPTURE_SNAP */
	__u32 rate;     /* frames per second per CPU, at most */
	__u32 owner;    /* pid of the capturing process */
	__u32 session;  /* copied into every record: frames of an earlier capture left in the ring are told apart */
	__u64 until_ns; /* lease: CLOCK_MONOTONIC (coarse) end of the capture */
};

/* Per-CPU state of the capture's rate limit. */
struct capture_state {
	__u64 window_ns;
	__u32 count;
	__u32 pad;
};

/* One captured frame, as the capture_events ring buffer carries it. */
struct capture_rec {
	__u64 time_ns;  /* bpf_ktime_get_ns() */
	__u32 len;      /* the frame's length */
	__u32 caplen;   /* bytes of it in data */
	__u32 vip_id;
	__u32 backend;  /* 0: none (dropped: no usable backend) */
	__u32 ifindex;  /* the interface it came in on and goes out of */
	__u32 session;  /* capture_cfg.session of the capture that took it */
	__u8 dir;       /* enum sluice_capture_dir */
	__u8 pad[3];
	__u8 data[SLUICE_CAPTURE_SNAP];
};

/* decap_allow key: a longest-prefix-match key over (family, address).
 * prefixlen counts bits of the data after it: 32 for the family word, so
 * that v4 and v6 prefixes never match each other, plus the address prefix. */
struct decap_allow_key {
	__u32 prefixlen;
	__u32 family;
	__u8 addr[16];
};

#endif
