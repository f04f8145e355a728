package loader

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/layout"
)

// SetConfig writes the global configuration. It writes nothing when the
// map already holds the same value, and reports whether it wrote.
func (d *Datapath) SetConfig(c Config) (bool, error) {
	raw := bpf.LbConfig{Seed: c.Seed}
	if len(c.MAC) != 6 {
		return false, fmt.Errorf("config mac %q: want a 6-byte Ethernet address", c.MAC)
	}
	copy(raw.Mac[:], c.MAC)
	src4, src6 := c.EncapSrc4, c.EncapSrc6
	if !src4.IsValid() {
		src4 = DefaultEncapSrc4
	}
	if !src6.IsValid() {
		src6 = DefaultEncapSrc6
	}
	if !src4.Is4() {
		return false, fmt.Errorf("config encap source v4 %s: not an IPv4 address", src4)
	}
	if !src6.Is6() || src6.Is4In6() {
		return false, fmt.Errorf("config encap source v6 %s: not an IPv6 address", src6)
	}
	raw.EncapSrc4 = layout.Words(src4)[0]
	raw.EncapSrc6 = layout.Words(src6)
	switch c.NewFlowLimit {
	case 0:
		raw.NewFlowLimit = DefaultNewFlowLimit
	case NoNewFlowLimit:
		raw.NewFlowLimit = 0
	default:
		raw.NewFlowLimit = c.NewFlowLimit
	}
	if c.VIPOpen {
		raw.Flags |= uint8(bpf.LbSluiceCfgSLUICE_CFG_VIP_OPEN)
	}
	if c.NoEcho {
		raw.Flags |= uint8(bpf.LbSluiceCfgSLUICE_CFG_NO_ECHO)
	}
	if c.FlowSync {
		raw.FlowSync = 1
	}
	var cur bpf.LbConfig
	if err := d.objs.Config.Lookup(uint32(0), &cur); err != nil {
		return false, fmt.Errorf("read config: %w", err)
	}
	if cur == raw {
		return false, nil
	}
	if err := d.objs.Config.Update(uint32(0), raw, ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("write config: %w", err)
	}
	return true, nil
}

// Config reads the global configuration.
func (d *Datapath) Config() (Config, error) {
	var raw bpf.LbConfig
	if err := d.objs.Config.Lookup(uint32(0), &raw); err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Config{
		Seed:      raw.Seed,
		MAC:       net.HardwareAddr(slices.Clone(raw.Mac[:])),
		EncapSrc4: layout.Addr([4]uint32{raw.EncapSrc4}, layout.Family(netip.IPv4Unspecified())),
		EncapSrc6: layout.Addr(raw.EncapSrc6, layout.Family(netip.IPv6Unspecified())),
		NewFlowLimit: func() uint32 {
			if raw.NewFlowLimit == 0 {
				return NoNewFlowLimit
			}
			return raw.NewFlowLimit
		}(),
		FlowSync: raw.FlowSync != 0,
	}, nil
}

// SetVIP creates or updates a VIP's forwarding settings. The ring fields are
// kept from the current entry; a new VIP has no ring (it drops) until
// ReplaceRing gives it one. Nothing is written when nothing changed.
func (d *Datapath) SetVIP(k VIPKey, v VIP) (bool, error) {
	if err := k.Validate(); err != nil {
		return false, err
	}
	if v.ID >= MaxVIPs {
		return false, fmt.Errorf("vip %s: id %d out of range (max %d)", k, v.ID, MaxVIPs-1)
	}
	if v.Forward != ForwardIPIP && v.Forward != ForwardDSR && v.Forward != ForwardGUE {
		return false, fmt.Errorf("vip %s: forward mode %d: want ipip, gue or dsr", k, v.Forward)
	}
	if v.Forward != ForwardGUE {
		v.GUEPort = 0
	} else if v.GUEPort == 0 {
		v.GUEPort = DefaultGUEPort
	}
	if v.UDPTimeout <= 0 {
		v.UDPTimeout = DefaultUDPTimeout
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vips, err := d.readVIPs()
	if err != nil {
		return false, err
	}
	rk := k.raw()
	for other, info := range vips {
		if other != rk && info.Id == v.ID {
			return false, fmt.Errorf("vip %s: id %d is already used by %s", k, v.ID, vipKeyFromRaw(other))
		}
	}
	cur, ok := vips[rk]
	raw := bpf.LbVipInfo{Id: v.ID, Forward: uint8(v.Forward), GuePort: layout.Htons(v.GUEPort), UdpTimeoutNs: uint64(v.UDPTimeout), RingSlot: v.ID * 2}
	if ok && cur.Id == v.ID {
		raw.RingSlot, raw.RingSize = cur.RingSlot, cur.RingSize
	}
	if ok && cur == raw {
		return false, nil
	}
	vips[rk] = raw
	if err := d.objs.VipAddrs.Update(layout.AddrKey(k.Addr), uint32(1), ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("write vip address %s: %w", k.Addr, err)
	}
	if err := d.writeVIPs(vips); err != nil {
		return false, fmt.Errorf("vip %s: %w", k, err)
	}
	return true, nil
}

// DeleteVIP removes a VIP and its rings. Its address stays in the
// fragment filter while another VIP uses it.
func (d *Datapath) DeleteVIP(k VIPKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vips, err := d.readVIPs()
	if err != nil {
		return err
	}
	rk := k.raw()
	cur, ok := vips[rk]
	if !ok {
		return nil
	}
	delete(vips, rk)
	if err := d.writeVIPs(vips); err != nil {
		return fmt.Errorf("delete vip %s: %w", k, err)
	}
	for _, slot := range []uint32{cur.Id * 2, cur.Id*2 + 1} {
		delete(d.installed, slot)
		if err := d.objs.Rings.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete ring of vip %s: %w", k, err)
		}
	}
	for other := range vips {
		if other.Addr == rk.Addr && other.Family == rk.Family {
			return nil
		}
	}
	if err := d.objs.VipAddrs.Delete(layout.AddrKey(k.Addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete vip address %s: %w", k.Addr, err)
	}
	return nil
}

// VIPs reads every VIP from the kernel.
func (d *Datapath) VIPs() (map[VIPKey]VIP, error) {
	raw, err := d.readVIPs()
	if err != nil {
		return nil, err
	}
	out := make(map[VIPKey]VIP, len(raw))
	for k, v := range raw {
		out[vipKeyFromRaw(k)] = VIP{
			ID: v.Id, Forward: Forward(v.Forward), GUEPort: layout.Ntohs(v.GuePort), UDPTimeout: time.Duration(v.UdpTimeoutNs),
			RingSlot: v.RingSlot, RingSize: v.RingSize,
		}
	}
	return out, nil
}

// ReplaceRing installs slots (backend indices, 0 for "no backend") as the
// VIP's ring in one atomic step: a ring of the active size replaces the
// active ring in one map-in-map update; a ring of another size goes into
// the VIP's inactive slot, then one swap of the VIP table switches slot and
// size together.
// An empty or all-zero ring makes the VIP drop. It writes nothing and
// returns false when the active ring already holds slots.
func (d *Datapath) ReplaceRing(k VIPKey, slots []uint32) (bool, error) {
	n := len(slots)
	if n == 0 || n > MaxRingSize || !big.NewInt(int64(n)).ProbablyPrime(0) { // exact below 2^64
		return false, fmt.Errorf("ring of vip %s: size %d must be a prime up to %d", k, n, MaxRingSize)
	}
	for i, b := range slots {
		if b >= MaxBackends {
			return false, fmt.Errorf("ring of vip %s: slot %d names backend %d (max %d)", k, i, b, MaxBackends-1)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vips, err := d.readVIPs()
	if err != nil {
		return false, err
	}
	cur, ok := vips[k.raw()]
	if !ok {
		return false, fmt.Errorf("ring of vip %s: no such vip", k)
	}
	if cur.RingSize == uint32(n) {
		active, known := d.installed[cur.RingSlot]
		if !known {
			active, _ = d.readRing(cur.RingSlot, cur.RingSize)
		}
		if slices.Equal(active, slots) {
			return false, nil
		}
	}
	// A ring of the same size replaces the active one in place: one
	// map-in-map update, seen whole by the next packet. A new size goes to
	// the other slot, and the VIP entry then switches slot and size in
	// one step.
	sameSize := cur.RingSize == uint32(n)
	next := cur.RingSlot
	if !sameSize {
		next = cur.Id * 2
		if cur.RingSize != 0 && cur.RingSlot == next {
			next++
		}
	}
	spec := d.ringSpec(uint32(chunks(n)))
	ring, err := ebpf.NewMap(spec)
	if err != nil {
		return false, fmt.Errorf("create ring of vip %s (size %d): %w", k, n, err)
	}
	defer ring.Close()
	keys := make([]uint32, chunks(n))
	packed := make([]bpf.LbRingChunk, chunks(n))
	for i := range keys {
		keys[i] = uint32(i)
	}
	for i, b := range slots {
		packed[i/ringChunk].Slot[i%ringChunk] = uint16(b)
	}
	if _, err := ring.BatchUpdate(keys, packed, nil); err != nil {
		return false, fmt.Errorf("fill ring of vip %s: %w", k, err)
	}
	if err := d.objs.Rings.Update(next, ring, ebpf.UpdateAny); err != nil {
		delete(d.installed, next)
		return false, fmt.Errorf("install ring of vip %s: %w", k, err)
	}
	if d.installed == nil {
		d.installed = map[uint32][]uint32{}
	}
	d.installed[next] = slices.Clone(slots)
	if sameSize {
		return true, nil
	}
	upd := cur
	upd.RingSlot, upd.RingSize = next, uint32(n)
	vips[k.raw()] = upd
	if err := d.writeVIPs(vips); err != nil {
		return false, fmt.Errorf("switch ring of vip %s: %w", k, err)
	}
	return true, nil
}

func (d *Datapath) ringSpec(n uint32) *ebpf.MapSpec {
	spec := d.ringTemplate.Copy()
	spec.Name = "sluice_ring"
	spec.MaxEntries = n
	return spec
}

// Ring reads back the VIP's active ring from the kernel.
func (d *Datapath) Ring(k VIPKey) ([]uint32, error) {
	vips, err := d.readVIPs()
	if err != nil {
		return nil, err
	}
	cur, ok := vips[k.raw()]
	if !ok {
		return nil, fmt.Errorf("ring of vip %s: no such vip", k)
	}
	if cur.RingSize == 0 {
		return nil, nil
	}
	return d.readRing(cur.RingSlot, cur.RingSize)
}

func (d *Datapath) readRing(slot, size uint32) ([]uint32, error) {
	var id ebpf.MapID
	if err := d.objs.Rings.Lookup(slot, &id); err != nil {
		return nil, fmt.Errorf("read ring slot %d: %w", slot, err)
	}
	ring, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("open ring %d: %w", id, err)
	}
	defer ring.Close()
	n := int(ring.MaxEntries())
	if n != chunks(int(size)) {
		return nil, fmt.Errorf("ring %d: %d chunks, want %d for %d slots", id, n, chunks(int(size)), size)
	}
	keys := make([]uint32, n)
	vals := make([]bpf.LbRingChunk, n)
	var cursor ebpf.MapBatchCursor
	got := 0
	for got < n {
		c, err := ring.BatchLookup(&cursor, keys[got:], vals[got:], nil)
		got += c
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read ring %d: %w", id, err)
		}
	}
	out := make([]uint32, 0, size)
	for _, c := range vals[:got] {
		for _, s := range c.Slot {
			if len(out) < int(size) {
				out = append(out, uint32(s))
			}
		}
	}
	return out, nil
}

// ringChunk is how many slots one ring array element packs (SLUICE_RING_CHUNK).
const ringChunk = len(bpf.LbRingChunk{}.Slot)

func chunks(slots int) int { return (slots + ringChunk - 1) / ringChunk }

// SetBackend writes backend table entry idx (1 .. MaxBackends-1). Nothing is
// written when the entry already holds b.
func (d *Datapath) SetBackend(idx uint32, b Backend) (bool, error) {
	if idx == 0 || idx >= MaxBackends {
		return false, fmt.Errorf("backend index %d out of range 1..%d", idx, MaxBackends-1)
	}
	if !b.Addr.IsValid() || b.Addr.Is4In6() {
		return false, fmt.Errorf("backend %d address %s: want an IPv4 or IPv6 address", idx, b.Addr)
	}
	if len(b.MAC) != 6 {
		return false, fmt.Errorf("backend %s mac %q: want a 6-byte Ethernet address", b.Addr, b.MAC)
	}
	raw := bpf.LbBackend{Addr: layout.Words(b.Addr), VipId: b.VIPID, Family: layout.Family(b.Addr), Flags: uint8(b.Flags)}
	copy(raw.Mac[:], b.MAC)
	var cur bpf.LbBackend
	if err := d.objs.Backends.Lookup(idx, &cur); err != nil {
		return false, fmt.Errorf("read backend %d: %w", idx, err)
	}
	if cur == raw {
		return false, nil
	}
	if err := d.objs.Backends.Update(idx, raw, ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("write backend %d (%s): %w", idx, b.Addr, err)
	}
	return true, nil
}

// ClearBackend empties entry idx: tracked flows to it are re-steered.
func (d *Datapath) ClearBackend(idx uint32) error {
	if idx == 0 || idx >= MaxBackends {
		return fmt.Errorf("backend index %d out of range 1..%d", idx, MaxBackends-1)
	}
	if err := d.objs.Backends.Update(idx, bpf.LbBackend{}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("clear backend %d: %w", idx, err)
	}
	return nil
}

// Backends reads every non-empty backend entry by index.
func (d *Datapath) Backends() (map[uint32]Backend, error) {
	out := map[uint32]Backend{}
	var k uint32
	var v bpf.LbBackend
	it := d.objs.Backends.Iterate()
	for it.Next(&k, &v) {
		if v.Family == 0 {
			continue
		}
		out[k] = Backend{
			Addr: layout.Addr(v.Addr, v.Family), VIPID: v.VipId, Flags: BackendFlags(v.Flags),
			MAC: net.HardwareAddr(bytes.Clone(v.Mac[:])),
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read backends: %w", err)
	}
	return out, nil
}

func sumCounters(per []bpf.LbCounter) Counter {
	var c Counter
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
	}
	return c
}

func readCounter(m *ebpf.Map, idx uint32) (Counter, error) {
	var per []bpf.LbCounter
	if err := m.Lookup(idx, &per); err != nil {
		return Counter{}, err
	}
	return sumCounters(per), nil
}

// Stats reads the global outcome and event counters.
func (d *Datapath) Stats() (map[Stat]Counter, error) {
	out := make(map[Stat]Counter, numStats)
	for _, s := range AllStats() {
		c, err := readCounter(d.objs.Stats, uint32(s))
		if err != nil {
			return nil, fmt.Errorf("read counter %s: %w", s, err)
		}
		out[s] = c
	}
	return out, nil
}

// VIPCounter reads the counters of the VIP with the given id.
func (d *Datapath) VIPCounter(id uint32) (Counter, error) {
	c, err := readCounter(d.objs.VipStats, id)
	if err != nil {
		return c, fmt.Errorf("read vip %d counters: %w", id, err)
	}
	return c, nil
}

// BackendCounter reads the counters of backend entry idx.
func (d *Datapath) BackendCounter(idx uint32) (Counter, error) {
	c, err := readCounter(d.objs.BackendStats, idx)
	if err != nil {
		return c, fmt.Errorf("read backend %d counters: %w", idx, err)
	}
	return c, nil
}

// ResetBackendCounter zeroes backend entry idx's counters (on reuse of the index).
func (d *Datapath) ResetBackendCounter(idx uint32) error {
	zero := make([]bpf.LbCounter, ebpf.MustPossibleCPU())
	if err := d.objs.BackendStats.Update(idx, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset backend %d counters: %w", idx, err)
	}
	return nil
}

func flowFromRaw(k bpf.LbFlowKey, v bpf.LbFlowState) Flow {
	return Flow{
		Src:          netip.AddrPortFrom(layout.Addr(k.Src, k.Family), layout.Ntohs(k.Sport)),
		Dst:          netip.AddrPortFrom(layout.Addr(k.Dst, k.Family), layout.Ntohs(k.Dport)),
		Proto:        Proto(k.Proto),
		Backend:      v.Backend,
		LastSeenNano: v.AtimeNs,
	}
}

func flow4FromRaw(k bpf.LbFlow4Key, v bpf.LbFlowState) Flow {
	w := func(a uint32) netip.Addr { return layout.Addr([4]uint32{a}, layout.Family(netip.IPv4Unspecified())) }
	return Flow{
		Src:          netip.AddrPortFrom(w(k.Src), layout.Ntohs(k.Sport)),
		Dst:          netip.AddrPortFrom(w(k.Dst), layout.Ntohs(k.Dport)),
		Proto:        Proto(k.Proto),
		Backend:      v.Backend,
		LastSeenNano: v.AtimeNs,
	}
}

// flowMapKey picks the table of a flow and builds its key.
func (d *Datapath) flowMapKey(src, dst netip.AddrPort, proto Proto) (*ebpf.Map, any, error) {
	if src.Addr().Is4() != dst.Addr().Is4() {
		return nil, nil, fmt.Errorf("flow %s -> %s: mixed address families", src, dst)
	}
	if dst.Addr().Is4() {
		return d.objs.Flows4, bpf.LbFlow4Key{
			Src: layout.Words(src.Addr())[0], Dst: layout.Words(dst.Addr())[0],
			Sport: layout.Htons(src.Port()), Dport: layout.Htons(dst.Port()), Proto: uint8(proto),
		}, nil
	}
	return d.objs.Flows6, bpf.LbFlowKey{
		Src: layout.Words(src.Addr()), Dst: layout.Words(dst.Addr()),
		Sport: layout.Htons(src.Port()), Dport: layout.Htons(dst.Port()),
		Proto: uint8(proto), Family: layout.Family(dst.Addr()),
	}, nil
}

// LookupFlow reads the connection-table entry of a client -> VIP flow.
func (d *Datapath) LookupFlow(src, dst netip.AddrPort, proto Proto) (Flow, bool, error) {
	m, k, err := d.flowMapKey(src, dst, proto)
	if err != nil {
		return Flow{}, false, err
	}
	var v bpf.LbFlowState
	err = m.Lookup(k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Flow{}, false, nil
	}
	if err != nil {
		return Flow{}, false, fmt.Errorf("read flow %s -> %s: %w", src, dst, err)
	}
	return Flow{Src: src, Dst: dst, Proto: proto, Backend: v.Backend, LastSeenNano: v.AtimeNs}, true, nil
}

// SetFlow writes a connection-table entry (flow sync, tests).
func (d *Datapath) SetFlow(f Flow) error {
	m, k, err := d.flowMapKey(f.Src, f.Dst, f.Proto)
	if err != nil {
		return err
	}
	v := bpf.LbFlowState{Backend: f.Backend, AtimeNs: f.LastSeenNano}
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write flow %s -> %s: %w", f.Src, f.Dst, err)
	}
	return nil
}

// Flows reads both connection tables.
func (d *Datapath) Flows() ([]Flow, error) {
	var out []Flow
	var k4 bpf.LbFlow4Key
	var k6 bpf.LbFlowKey
	var v bpf.LbFlowState
	it := d.objs.Flows4.Iterate()
	for it.Next(&k4, &v) {
		out = append(out, flow4FromRaw(k4, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read ipv4 flows: %w", err)
	}
	it = d.objs.Flows6.Iterate()
	for it.Next(&k6, &v) {
		out = append(out, flowFromRaw(k6, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read ipv6 flows: %w", err)
	}
	return out, nil
}

// FlowCount counts connection-table entries of both families.
func (d *Datapath) FlowCount() (int, error) {
	flows, err := d.Flows()
	return len(flows), err
}

// FlowTableSize is the capacity of each connection table.
func (d *Datapath) FlowTableSize() uint32 { return d.objs.Flows4.MaxEntries() }
