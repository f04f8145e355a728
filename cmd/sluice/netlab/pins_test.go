package netlab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/loader/decap"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// xdpProg is the id of the XDP program attached to h's link, or 0.
func xdpProg(t *testing.T, h *Host) uint32 {
	t.Helper()
	var id uint32
	if err := h.Netlink(func(nl *netlink.Handle) error {
		l, err := nl.LinkByName(h.Link)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// eth0Hosts builds an environment of hosts whose link is renamed eth0,
// each in its namespace; it is closed when the test ends.
func eth0Hosts(t *testing.T, names ...string) (*Env, []*Host) {
	t.Helper()
	testutil.Require(t)
	env, err := New(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	var hosts []*Host
	for i, name := range names {
		h, err := env.AddHost(name, netip.MustParsePrefix(fmt.Sprintf("10.78.0.%d/24", i+1)), HostOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Netlink(func(nl *netlink.Handle) error {
			l, err := nl.LinkByName(h.Link)
			if err != nil {
				return err
			}
			if err := nl.LinkSetDown(l); err != nil {
				return err
			}
			if err := nl.LinkSetName(l, "eth0"); err != nil {
				return err
			}
			return nl.LinkSetUp(l)
		}); err != nil {
			t.Fatal(err)
		}
		h.Link = "eth0"
		hosts = append(hosts, h)
	}
	return env, hosts
}

// TestPinsPerNamespace: interfaces of one name, eth0, in three namespaces
// each get a decapsulator and a load balancer of their own. Pins are kept
// per namespace and interface, so none adopts another's: all three keep
// an XDP program, and a ring written through one is not changed by
// attaching the others.
func TestPinsPerNamespace(t *testing.T) {
	ctx := context.Background()
	env, hosts := eth0Hosts(t, "n1", "n2", "n3")
	for _, h := range hosts {
		if err := h.Do(func() error {
			d, err := decap.Attach(ctx, decap.Options{Iface: "eth0", PinRoot: env.PinRoot()})
			if err != nil {
				return err
			}
			return d.Close() // the pins keep it attached
		}); err != nil {
			t.Fatalf("decap attach on %s: %v", h.Name, err)
		}
	}
	seen := map[uint32]string{}
	for _, h := range hosts {
		id := xdpProg(t, h)
		if id == 0 {
			t.Fatalf("%s's eth0 lost its decapsulator when the others attached", h.Name)
		}
		if other, dup := seen[id]; dup {
			t.Fatalf("%s and %s share XDP program %d", h.Name, other, id)
		}
		seen[id] = h.Name
		if err := h.Do(func() error { return decap.Detach("eth0", env.PinRoot()) }); err != nil {
			t.Fatalf("detach decap on %s: %v", h.Name, err)
		}
	}
	// The load balancer: a ring written through the first is not touched
	// by the others' attaching, which adopt nothing.
	vip := loader.VIPKey{Addr: netip.MustParseAddr("10.78.1.100"), Port: 80, Proto: loader.TCP}
	dps := make([]*loader.Datapath, len(hosts))
	var err error
	for i, h := range hosts {
		if dps[i], err = h.AttachLB(ctx, loader.Options{FlowTableSize: 4096}); err != nil {
			t.Fatalf("attach on %s: %v", h.Name, err)
		}
		defer dps[i].Detach()
		if dps[i].Adopted() {
			t.Fatalf("%s adopted another namespace's data plane", h.Name)
		}
		if i == 0 {
			if _, err := dps[0].SetVIP(vip, loader.VIP{ID: 1, Forward: loader.ForwardDSR}); err != nil {
				t.Fatal(err)
			}
			ring := make([]uint32, 13)
			for j := range ring {
				ring[j] = 1
			}
			if _, err := dps[0].ReplaceRing(vip, ring); err != nil {
				t.Fatal(err)
			}
		}
	}
	ring, err := dps[0].Ring(vip)
	if err != nil || len(ring) != 13 || ring[0] != 1 {
		t.Fatalf("n1's ring after the others attached: %v %v", ring, err)
	}
	if vips, err := dps[1].VIPs(); err != nil || len(vips) != 0 {
		t.Fatalf("n2 sees VIPs it was never given: %v %v", vips, err)
	}
	for _, h := range hosts {
		if xdpProg(t, h) == 0 {
			t.Fatalf("%s's eth0 has no load balancer attached", h.Name)
		}
	}
}

// TestLegacyPinsMigrate: a data plane an older version pinned at the
// interface's name alone is adopted by the interface it belongs to (moved
// to its per-namespace directory, forwarding untouched), and left alone by
// an interface of the same name in another namespace.
func TestLegacyPinsMigrate(t *testing.T) {
	ctx := context.Background()
	env, hosts := eth0Hosts(t, "o1", "o2")
	a, b := hosts[0], hosts[1]
	old, err := a.AttachLB(ctx, loader.Options{FlowTableSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	legacy := filepath.Join(env.PinRoot(), "eth0")
	if err := os.Rename(old.PinDir(), legacy); err != nil { // as an older version pinned it
		t.Fatal(err)
	}
	old.Close()
	progA := xdpProg(t, a)
	// b's eth0 is another interface: it attaches its own, a keeps its own.
	db, err := b.AttachLB(ctx, loader.Options{FlowTableSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Detach()
	if db.Adopted() || xdpProg(t, a) != progA {
		t.Fatalf("o2 took over o1's legacy pins (adopted %v)", db.Adopted())
	}
	if _, err := os.Stat(legacy); err != nil {
		t.Fatalf("o1's legacy pins are gone: %v", err)
	}
	// a's own interface adopts them.
	da, err := a.AttachLB(ctx, loader.Options{FlowTableSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer da.Detach()
	if !da.Adopted() || da.PinDir() == legacy {
		t.Fatalf("o1 did not adopt its legacy pins (adopted %v, pinned at %s)", da.Adopted(), da.PinDir())
	}
	if _, err := os.Stat(legacy); !os.IsNotExist(err) {
		t.Fatalf("the legacy directory is still there: %v", err)
	}
}

// TestAttachedMeansOurs: a data plane is attached while its own program
// runs on the interface; once another XDP program (here the
// decapsulator) runs there instead, it is not, although the interface
// still reports an XDP program. BGP announces only while it is.
func TestAttachedMeansOurs(t *testing.T) {
	ctx := context.Background()
	env, hosts := eth0Hosts(t, "a1")
	h := hosts[0]
	dp, err := h.AttachLB(ctx, loader.Options{FlowTableSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	attached := func() (ours bool) {
		if err := h.Do(func() error { ours = dp.Attached(); return nil }); err != nil {
			t.Fatal(err)
		}
		return ours
	}
	if !attached() {
		t.Fatal("not attached right after attaching")
	}
	if err := dp.Detach(); err != nil {
		t.Fatal(err)
	}
	if attached() || xdpProg(t, h) != 0 {
		t.Fatalf("detached: Attached %v, XDP program %d", attached(), xdpProg(t, h))
	}
	if err := h.Do(func() error {
		d, err := decap.Attach(ctx, decap.Options{Iface: "eth0", PinRoot: env.PinRoot()})
		if err != nil {
			return err
		}
		return d.Close()
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Do(func() error { return decap.Detach("eth0", env.PinRoot()) }) })
	if id := xdpProg(t, h); id == 0 || attached() {
		t.Fatalf("another program (%d) on the interface: Attached %v, want false", id, attached())
	}
}
