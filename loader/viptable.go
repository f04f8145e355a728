package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

const (
	vipTableSize   = 4096 // SLUICE_VIP_TABLE
	vipTableProbes = 8    // SLUICE_VIP_PROBES
)

// vipHash is the slot of a key, as vip_hash in lb.c computes it.
func vipHash(k bpf.LbVipKey) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint16(b[0:], k.Port)
	b[2], b[3] = k.Proto, k.Family
	w4 := binary.NativeEndian.Uint32(b[:])
	return jhash3(k.Addr[0]^k.Addr[1], k.Addr[2]^k.Addr[3], w4, 0)
}

// buildVIPTable places every VIP by linear probing from its hash slot.
// Keys are placed in a fixed order, so equal sets give equal tables.
func buildVIPTable(vips map[bpf.LbVipKey]bpf.LbVipInfo) ([]bpf.LbVipEntry, error) {
	if len(vips) > MaxVIPs {
		return nil, fmt.Errorf("vip table: %d vips, at most %d", len(vips), MaxVIPs)
	}
	keys := make([]bpf.LbVipKey, 0, len(vips))
	for k := range vips {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b bpf.LbVipKey) int {
		return slices.Compare(rawKeyWords(a), rawKeyWords(b))
	})
	table := make([]bpf.LbVipEntry, vipTableSize)
	for _, k := range keys {
		h := vipHash(k)
		placed := false
		for i := uint32(0); i < vipTableProbes; i++ {
			slot := (h + i) & (vipTableSize - 1)
			if table[slot].Key.Family == 0 {
				table[slot] = bpf.LbVipEntry{Key: k, Info: vips[k]}
				placed = true
				break
			}
		}
		if !placed {
			return nil, fmt.Errorf("vip table: no free slot within %d of %s's hash slot", vipTableProbes, vipKeyFromRaw(k))
		}
	}
	return table, nil
}

func rawKeyWords(k bpf.LbVipKey) []uint32 {
	return []uint32{k.Addr[0], k.Addr[1], k.Addr[2], k.Addr[3], uint32(k.Port), uint32(k.Proto), uint32(k.Family)}
}

// readVIPs reads the active VIP table from the kernel.
func (d *Datapath) readVIPs() (map[bpf.LbVipKey]bpf.LbVipInfo, error) {
	out := map[bpf.LbVipKey]bpf.LbVipInfo{}
	var id ebpf.MapID
	err := d.objs.Vips.Lookup(uint32(0), &id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read vip table: %w", err)
	}
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("open vip table %d: %w", id, err)
	}
	defer m.Close()
	keys := make([]uint32, vipTableSize)
	table := make([]bpf.LbVipEntry, vipTableSize)
	var cursor ebpf.MapBatchCursor
	n, err := m.BatchLookup(&cursor, keys, table, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read vip table %d: %w", id, err)
	}
	for _, e := range table[:n] {
		if e.Key.Family != 0 {
			out[e.Key] = e.Info
		}
	}
	return out, nil
}

// writeVIPs builds a new table and swaps it in with one update.
func (d *Datapath) writeVIPs(vips map[bpf.LbVipKey]bpf.LbVipInfo) error {
	table, err := buildVIPTable(vips)
	if err != nil {
		return err
	}
	spec := d.vipTableTemplate.Copy()
	spec.Name = "sluice_vips"
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create vip table: %w", err)
	}
	defer m.Close()
	keys := make([]uint32, vipTableSize)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := m.BatchUpdate(keys, table, nil); err != nil {
		return fmt.Errorf("fill vip table: %w", err)
	}
	if err := d.objs.Vips.Update(uint32(0), m, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("install vip table: %w", err)
	}
	return nil
}
