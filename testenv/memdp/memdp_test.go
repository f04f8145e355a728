package memdp

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// script writes and reads the tables the reconciler writes, and says what each step answered.
func script(t reconcile.Maps) []string {
	k := loader.VIPKey{Addr: netip.MustParseAddr("10.0.0.100"), Port: 80, Proto: loader.TCP}
	k2 := loader.VIPKey{Addr: netip.MustParseAddr("2001:db8::1"), Port: 53, Proto: loader.UDP}
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	be := loader.Backend{Addr: netip.MustParseAddr("10.0.0.1"), VIPID: 3, Flags: loader.BackendUsable, MAC: mac}
	ring := func(n int, b uint32) []uint32 { r := make([]uint32, n); r[0] = b; return r }
	var out []string
	note := func(what string, args ...any) { out = append(out, fmt.Sprintf(what, args...)) }
	step := func(what string, changed bool, err error) { note("%s: %v %v", what, changed, err != nil) }
	ch, err := t.SetVIP(k, loader.VIP{ID: 3, Forward: loader.ForwardIPIP})
	step("new vip", ch, err)
	ch, err = t.SetVIP(k, loader.VIP{ID: 3, Forward: loader.ForwardIPIP})
	step("same vip", ch, err)
	ch, err = t.SetVIP(k2, loader.VIP{ID: 3, Forward: loader.ForwardDSR})
	step("an id in use", ch, err)
	ch, err = t.SetVIP(k2, loader.VIP{ID: 4, Forward: loader.ForwardGUE})
	step("gue vip", ch, err)
	ch, err = t.SetBackend(1, be)
	step("new backend", ch, err)
	ch, err = t.SetBackend(1, be)
	step("same backend", ch, err)
	ch, err = t.SetBackend(0, be)
	step("index 0", ch, err)
	be.Flags = loader.BackendDraining
	ch, err = t.SetBackend(1, be)
	step("flags", ch, err)
	for _, r := range []struct {
		what string
		ring []uint32
	}{{"ring", ring(7, 1)}, {"same ring", ring(7, 1)}, {"same size", ring(7, 0)}, {"new size", ring(11, 1)}, {"not prime", ring(9, 1)}} {
		ch, err = t.ReplaceRing(k, r.ring)
		step(r.what, ch, err)
	}
	got, err := t.Ring(k)
	note("ring read back: %v %v", got, err)
	ch, err = t.SetVIP(k, loader.VIP{ID: 3, Forward: loader.ForwardDSR})
	step("forward changed", ch, err)
	got, _ = t.Ring(k)
	note("ring kept: %v", got)
	vips, _ := t.VIPs()
	for _, vk := range slices.SortedFunc(maps.Keys(vips), func(a, b loader.VIPKey) int { return a.Addr.Compare(b.Addr) }) {
		v := vips[vk]
		note("vip %s: id %d %v gue %d udp %v ring size %d", vk, v.ID, v.Forward, v.GUEPort, v.UDPTimeout, v.RingSize)
	}
	bes, _ := t.Backends()
	note("backends %v", bes)
	note("clear: %v", t.ClearBackend(1) != nil)
	note("delete: %v, again: %v", t.DeleteVIP(k) != nil, t.DeleteVIP(k) != nil)
	_, err = t.ReplaceRing(k, ring(7, 1))
	note("ring of a deleted vip refused: %v", err != nil)
	bes, _ = t.Backends()
	vips, _ = t.VIPs()
	note("left: %d backends, %d vips", len(bes), len(vips))
	return out
}

// TestMatchesTheLoader: the in-memory tables answer a script of writes
// and reads exactly as the kernel's do.
func TestMatchesTheLoader(t *testing.T) {
	testutil.Require(t)
	d, err := loader.Load(context.Background(), loader.Options{FlowTableSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	kernel, mem := script(d), script(&Maps{})
	for i := range max(len(kernel), len(mem)) {
		var k, m string
		if i < len(kernel) {
			k = kernel[i]
		}
		if i < len(mem) {
			m = mem[i]
		}
		if k != m {
			t.Errorf("step %d: the kernel's tables answer %q, memdp's %q", i, k, m)
		}
	}
}
