package e2e

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/loader"
)

// ring is a node's ring for vip as GET /v1/ring reads it from the kernel.
func ring(t testing.TB, d *daemonProc, vip string) api.RingResponse {
	t.Helper()
	var r api.RingResponse
	q := map[string][]string{"vip": {vip}}
	if err := api.NewClient(d.socket).Do(context.Background(), "GET", "/v1/ring", q, nil, &r); err != nil {
		t.Fatalf("ring: %v", err)
	}
	return r
}

// TestBGPSpread: 1 000 new connections from the client behind the router
// spread over all three LB nodes by the router's L4 ECMP hash, each node
// taking 20–47% of them (the entries its connection table gained), and every connection
// reaches the backend that every node's ring names for its 5-tuple.
func TestBGPSpread(t *testing.T) {
	lc, b := newBGPCluster(t, 3, 3, false, "--bgp-learn", "500ms")
	waitHops(t, lc.lab.Router, b, "10.77.1.100", 3, 10*time.Second)
	want := ring(t, lc.nodes[0], vipTCP)
	for i, n := range lc.nodes[1:] {
		if r := ring(t, n, vipTCP); !slices.Equal(r.Slots, want.Slots) {
			t.Fatalf("node %d's ring differs from node 1's", i+2)
		}
	}
	before := make([]float64, len(lc.nodes))
	for i, h := range lc.lab.Nodes {
		before[i] = newScraper(h).value(t, "sluice_conntrack_entries")
	}
	const conns = 1000
	seed := loader.HashSeed(0x5eed) // the daemon's default --seed
	wrong := 0
	for i := range conns {
		c, err := dialVIP(t, lc.lab, vipAP)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		src := netip.MustParseAddrPort(c.c.LocalAddr().String())
		slot := loader.FlowHash(src, vipAP, loader.TCP, seed) % uint32(want.RingSize)
		be := backendByName(lc.lab, c.backend)
		c.c.Close()
		if be == nil || be.Addr.Addr().String() != want.Slots[slot] {
			if wrong++; wrong <= 5 {
				t.Errorf("connection %d from %v reached %q, the ring's slot %d names %s", i, src, c.backend, slot, want.Slots[slot])
			}
		}
	}
	total := 0.0
	for i, h := range lc.lab.Nodes {
		n := newScraper(h).value(t, "sluice_conntrack_entries") - before[i]
		total += n
		t.Logf("node %d took %.0f of %d new connections (%.1f%%)", i+1, n, conns, 100*n/conns)
		if share := n / conns; share < .20 || share > .47 {
			t.Errorf("node %d took %.1f%% of new connections, want 20–47%%", i+1, 100*share)
		}
	}
	if total != conns {
		t.Errorf("the nodes' tables gained %.0f entries for %d connections", total, conns)
	}
	t.Logf("%d of %d connections reached a backend other than the ring's", wrong, conns)
}
