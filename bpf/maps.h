/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* xdp_lb's and tc_probe's maps (their layouts are sluice.h's), and
 * the BTF anchor that makes bpf2go emit the types no map names. */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

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

#endif /* SLUICE_MAPS_H */
