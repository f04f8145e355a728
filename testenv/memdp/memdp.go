// Package memdp is an in-memory data plane for tests that need no
// kernel: the loader's VIP, backend and ring tables with its rules and
// its write semantics (a write that changes nothing writes nothing and
// says so). TestMatchesTheLoader runs one script against both.
package memdp

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/sluicelb/sluice/loader"
)

// Maps are the tables. The zero value is empty and ready.
type Maps struct {
	mu       sync.Mutex
	vips     map[loader.VIPKey]loader.VIP
	rings    map[loader.VIPKey][]uint32
	backends map[uint32]loader.Backend
	resets   map[uint32]int
	writes   int
	fail     error
}

func (m *Maps) init() {
	if m.vips == nil {
		m.vips, m.rings, m.backends, m.resets = map[loader.VIPKey]loader.VIP{}, map[loader.VIPKey][]uint32{}, map[uint32]loader.Backend{}, map[uint32]int{}
	}
}

// Writes is how many writes changed something.
func (m *Maps) Writes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes
}

// FailWrites makes every later write fail with err (nil: succeed again).
func (m *Maps) FailWrites(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = err
}

// wrote counts a change, or refuses it as FailWrites asked (under mu).
func (m *Maps) wrote() error {
	if m.fail != nil {
		return m.fail
	}
	m.init()
	m.writes++
	return nil
}

// VIPs reads every VIP.
func (m *Maps) VIPs() (map[loader.VIPKey]loader.VIP, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[loader.VIPKey]loader.VIP, len(m.vips))
	for k, v := range m.vips {
		out[k] = v
	}
	return out, nil
}

// SetVIP creates or updates a VIP, keeping its ring, as the loader does.
func (m *Maps) SetVIP(k loader.VIPKey, v loader.VIP) (bool, error) {
	if err := k.Validate(); err != nil {
		return false, err
	}
	if v.ID >= loader.MaxVIPs {
		return false, fmt.Errorf("vip %s: id %d out of range (max %d)", k, v.ID, loader.MaxVIPs-1)
	}
	if v.Forward != loader.ForwardIPIP && v.Forward != loader.ForwardDSR && v.Forward != loader.ForwardGUE {
		return false, fmt.Errorf("vip %s: forward mode %d: want ipip, gue or dsr", k, v.Forward)
	}
	if v.Forward != loader.ForwardGUE {
		v.GUEPort = 0
	} else if v.GUEPort == 0 {
		v.GUEPort = loader.DefaultGUEPort
	}
	if v.UDPTimeout <= 0 {
		v.UDPTimeout = loader.DefaultUDPTimeout
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	for other, o := range m.vips {
		if other != k && o.ID == v.ID {
			return false, fmt.Errorf("vip %s: id %d is already used by %s", k, v.ID, other)
		}
	}
	cur, ok := m.vips[k]
	v.RingSlot, v.RingSize = v.ID*2, 0
	if ok && cur.ID == v.ID {
		v.RingSlot, v.RingSize = cur.RingSlot, cur.RingSize
	}
	if ok && cur == v {
		return false, nil
	}
	if err := m.wrote(); err != nil {
		return false, err
	}
	if ok && cur.ID != v.ID {
		delete(m.rings, k)
	}
	m.vips[k] = v
	return true, nil
}

// DeleteVIP removes a VIP and its ring.
func (m *Maps) DeleteVIP(k loader.VIPKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vips[k]; !ok {
		return nil
	}
	if err := m.wrote(); err != nil {
		return err
	}
	delete(m.vips, k)
	delete(m.rings, k)
	return nil
}

// ReplaceRing installs a VIP's ring whole; the same ring writes nothing.
func (m *Maps) ReplaceRing(k loader.VIPKey, slots []uint32) (bool, error) {
	n := len(slots)
	if n == 0 || n > loader.MaxRingSize || !big.NewInt(int64(n)).ProbablyPrime(0) {
		return false, fmt.Errorf("ring of vip %s: size %d must be a prime up to %d", k, n, loader.MaxRingSize)
	}
	for i, b := range slots {
		if b >= loader.MaxBackends {
			return false, fmt.Errorf("ring of vip %s: slot %d names backend %d (max %d)", k, i, b, loader.MaxBackends-1)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.vips[k]
	if !ok {
		return false, fmt.Errorf("ring of vip %s: no such vip", k)
	}
	if slices.Equal(m.rings[k], slots) {
		return false, nil
	}
	if err := m.wrote(); err != nil {
		return false, err
	}
	if cur.RingSize != uint32(n) {
		next := cur.ID * 2
		if cur.RingSize != 0 && cur.RingSlot == next {
			next++
		}
		cur.RingSlot, cur.RingSize = next, uint32(n)
		m.vips[k] = cur
	}
	m.rings[k] = slices.Clone(slots)
	return true, nil
}

// Ring reads a VIP's active ring (nil before its first).
func (m *Maps) Ring(k loader.VIPKey) ([]uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vips[k]; !ok {
		return nil, fmt.Errorf("ring of vip %s: no such vip", k)
	}
	return slices.Clone(m.rings[k]), nil
}

// SetBackend writes entry idx; the same entry writes nothing.
func (m *Maps) SetBackend(idx uint32, b loader.Backend) (bool, error) {
	if idx == 0 || idx >= loader.MaxBackends {
		return false, fmt.Errorf("backend index %d out of range 1..%d", idx, loader.MaxBackends-1)
	}
	if !b.Addr.IsValid() || b.Addr.Is4In6() {
		return false, fmt.Errorf("backend %d address %s: want an IPv4 or IPv6 address", idx, b.Addr)
	}
	if len(b.MAC) != 6 {
		return false, fmt.Errorf("backend %s mac %q: want a 6-byte Ethernet address", b.Addr, b.MAC)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.backends[idx]; ok && cur.Addr == b.Addr && cur.VIPID == b.VIPID && cur.Flags == b.Flags && slices.Equal(cur.MAC, b.MAC) {
		return false, nil
	}
	if err := m.wrote(); err != nil {
		return false, err
	}
	b.MAC = slices.Clone(b.MAC)
	m.backends[idx] = b
	return true, nil
}

// ClearBackend empties entry idx.
func (m *Maps) ClearBackend(idx uint32) error {
	if idx == 0 || idx >= loader.MaxBackends {
		return fmt.Errorf("backend index %d out of range 1..%d", idx, loader.MaxBackends-1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.wrote(); err != nil {
		return err
	}
	delete(m.backends, idx)
	return nil
}

// Backends reads every non-empty entry by index.
func (m *Maps) Backends() (map[uint32]loader.Backend, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint32]loader.Backend, len(m.backends))
	for i, b := range m.backends {
		b.MAC = slices.Clone(b.MAC)
		out[i] = b
	}
	return out, nil
}

// ResetBackendCounter zeroes entry idx's counter (counted, for tests).
func (m *Maps) ResetBackendCounter(idx uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	m.resets[idx]++
	return nil
}

// Slots counts ring k's slots by backend address (empty slots under the
// invalid address).
func (m *Maps) Slots(k loader.VIPKey) map[netip.Addr]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[netip.Addr]int{}
	for _, s := range m.rings[k] {
		out[m.backends[s].Addr]++
	}
	return out
}

// Backend is the entry of backend addr of VIP id, if any.
func (m *Maps) Backend(id uint32, addr netip.Addr) (loader.Backend, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range m.backends {
		if b.VIPID == id && b.Addr == addr {
			return b, true
		}
	}
	return loader.Backend{}, false
}

// ErrWrite is a write failure a test injects.
var ErrWrite = errors.New("memdp: write refused")

// Datapath is the whole data plane the daemon drives, in memory: the
// tables, its configuration, an interface that does not exist, and
// counters that stay zero. It has no connection table and no programs.
type Datapath struct {
	Maps
	ifi    *net.Interface
	mu     sync.Mutex
	config loader.Config
	closed bool
}

// New is an in-memory data plane on a made-up interface named name.
func New(name string) *Datapath {
	return &Datapath{ifi: &net.Interface{Index: 1 << 20, Name: name, MTU: 1500, HardwareAddr: net.HardwareAddr{2, 0x51, 0xce, 0, 0, 1}}}
}

// SetConfig keeps the configuration.
func (d *Datapath) SetConfig(c loader.Config) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := fmt.Sprint(d.config) != fmt.Sprint(c)
	d.config = c
	return changed, nil
}

// Config is the configuration last set.
func (d *Datapath) Config() loader.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.config
}

func (d *Datapath) Iface() *net.Interface       { return d.ifi }
func (d *Datapath) Attached() bool              { return d.ifi != nil }
func (d *Datapath) Adopted() bool               { return false }
func (d *Datapath) ProbeProgram() *ebpf.Program { return nil }

// FlowEvents: there is no connection table to follow.
func (d *Datapath) FlowEvents() (*loader.FlowEventReader, error) {
	return nil, errors.New("memdp: no connection table")
}

func (d *Datapath) Flows() ([]loader.Flow, error) { return nil, nil }
func (d *Datapath) SetFlow(loader.Flow) error     { return nil }
func (d *Datapath) FlowCount() (int, error)       { return 0, nil }
func (d *Datapath) Stats() (map[loader.Stat]loader.Counter, error) {
	return map[loader.Stat]loader.Counter{}, nil
}
func (d *Datapath) VIPCounter(uint32) (loader.Counter, error)     { return loader.Counter{}, nil }
func (d *Datapath) BackendCounter(uint32) (loader.Counter, error) { return loader.Counter{}, nil }

// Close and Detach let the data plane go; Closed says whether either ran.
func (d *Datapath) Close() error  { return d.release() }
func (d *Datapath) Detach() error { return d.release() }

func (d *Datapath) release() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// Closed says whether the data plane was let go.
func (d *Datapath) Closed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}
