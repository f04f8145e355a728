package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// TestBGPIPv6: an IPv6 VIP address goes to the router as a /128 over the
// IPv4 sessions, its next hop each node's own IPv6 address (taken from
// the interface); the router's kernel route gets three next hops, 300
// connections from the client over IPv6 reach the backends through all
// three nodes, and with the VIP's backends gone the /128 is withdrawn by
// every node while the address's /32 stays.
func TestBGPIPv6(t *testing.T) {
	lc, b := newBGPCluster(t, 3, 3, false, "--bgp-learn", "500ms")
	router := lc.lab.Router
	const vip6, addr6 = "[fd77:1::100]:7/tcp", "fd77:1::100"
	a := lc.nodes[0]
	a.mustCLI(t, "vip", "add", vip6, "--forward", "ipip")
	for _, be := range lc.lab.Backends {
		a.mustCLI(t, append([]string{"backend", "add", vip6, be.Addr6.Addr().String()}, fastCheck...)...)
	}
	lc.waitSameRings(t, 20*time.Second)
	d := waitHops(t, router, b, addr6, 3, 15*time.Second)
	hops := nextHops(t, router, addr6)
	slices.Sort(hops)
	var want []string
	for _, n := range lc.lab.Nodes {
		want = append(want, n.Addr6.Addr().String())
	}
	if !slices.Equal(hops, want) {
		t.Fatalf("the router's route to %s goes via %v, want the nodes' IPv6 addresses %v", addr6, hops, want)
	}
	t.Logf("the router's route to %s has next hops %v (%v after the VIP was added)", addr6, hops, d)
	for i, n := range lc.nodes {
		if st := bgpStatus(t, n); !slices.Contains(st.Announced, addr6+"/128") {
			t.Fatalf("node %d announces %v, want %s/128 among them", i+1, st.Announced, addr6)
		}
	}
	before := make([]float64, len(lc.nodes))
	for i, h := range lc.lab.Nodes {
		before[i] = newScraper(h).value(t, "sluice_conntrack_entries")
	}
	const conns = 300
	backends := map[string]int{}
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := lc.lab.Client.Dial(ctx, "tcp6", "", "[fd77:1::100]:7")
		cancel()
		if err != nil {
			t.Fatalf("connection %d over IPv6: %v", i, err)
		}
		name, err := netlab.Greeting(c)
		c.Close()
		if err != nil {
			t.Fatalf("connection %d over IPv6: %v", i, err)
		}
		backends[name]++
	}
	for i, h := range lc.lab.Nodes {
		n := newScraper(h).value(t, "sluice_conntrack_entries") - before[i]
		t.Logf("node %d took %.0f of %d IPv6 connections", i+1, n, conns)
		if n == 0 {
			t.Errorf("node %d took none of the IPv6 connections", i+1)
		}
	}
	t.Logf("IPv6 connections per backend: %v", backends)
	for _, be := range lc.lab.Backends {
		a.mustCLI(t, "backend", "del", vip6, be.Addr6.Addr().String())
	}
	gone := waitHops(t, router, b, addr6, 0, 10*time.Second)
	if n := len(nextHops(t, router, "10.77.1.100")); n != 3 {
		t.Fatalf("the /128 withdrawn: the /32 has %d next hops, want 3", n)
	}
	for i, n := range lc.nodes {
		if st := bgpStatus(t, n); slices.Contains(st.Announced, addr6+"/128") {
			t.Fatalf("node %d still announces %s/128 with no backends: %+v", i+1, addr6, st)
		}
	}
	t.Logf("the VIP's backends deleted: the /128 left the router after %v; the /32 kept its 3 next hops", gone)
}
