package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// stubPassword is the TCP MD5 password of TestBGPStubNoTransit's sessions.
const stubPassword = "sluice-md5-test"

// exportingBIRD is a BIRD config that sends the LB everything it has,
// here n static /32s of 10.OCTET.0.0/16, over a session signed with
// TCP MD5.
func exportingBIRD(id netip.Addr, asn int, lb netip.Addr, octet, n int) string {
	var c strings.Builder
	fmt.Fprintf(&c, "log stderr all;\nrouter id %s;\nprotocol device {}\nprotocol static st { ipv4; ", id)
	for i := range n {
		fmt.Fprintf(&c, "route 10.%d.%d.%d/32 blackhole; ", octet, i/250, i%250+1)
	}
	c.WriteString("}\n")
	fmt.Fprintf(&c, "protocol bgp lb1 {\n  local %s as %d;\n  neighbor %s as 65001;\n  passive on;\n  hold time 3;\n  password \"%s\";\n"+
		"  ipv4 { import all; export all; };\n}\n", id, asn, lb, stubPassword)
	return c.String()
}

// birdRoutes counts the routes BIRD b holds from protocol proto within
// prefix.
func birdRoutes(t testing.TB, b *netlab.BIRD, proto, prefix string) int {
	t.Helper()
	out, err := b.Show(context.Background(), "route", "in", prefix, "protocol", proto, "count")
	if err != nil {
		t.Fatalf("birdc: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		var n int
		if strings.Contains(l, " routes for ") { // "N of M routes for K networks in table T"
			if _, err := fmt.Sscan(l, &n); err == nil {
				return n
			}
		}
	}
	t.Fatalf("birdc count: %q", out)
	return 0
}

// TestBGPStubNoTransit: the LB's speaker imports nothing and exports
// only its own routes. Two BIRD routers in different ASNs, each
// exporting everything (200 routes of its own) over TCP MD5
// (--bgp-password): both sessions come up and both routers get the VIP,
// neither learns the other's routes through the LB (on the old code
// each learned all 200), and the LB's memory stays flat. Then one router
// sends 3 000 more, past --bgp-max-prefixes (1 000): that session is
// shut down, the LB's memory stays bounded, and the other router keeps
// the VIP.
func TestBGPStubNoTransit(t *testing.T) {
	lab := newLab(t, netlab.LabOptions{Backends: 1, Router: true})
	r2Addr := netip.MustParsePrefix("10.77.0.253/24")
	r2, err := lab.AddHost("r2", r2Addr, netlab.HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb := lab.LB.Addr.Addr()
	b1, err := netlab.StartBIRD(context.Background(), t.TempDir(), lab.Router, exportingBIRD(routerAddr.Addr(), 65000, lb, 201, 200))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b1.Stop)
	dir2 := t.TempDir()
	b2, err := netlab.StartBIRD(context.Background(), dir2, r2, exportingBIRD(r2Addr.Addr(), 65002, lb, 202, 200))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b2.Stop)
	d := startDaemon(t, lab, "", "--bgp-asn", "65001", "--bgp-peer", routerAddr.Addr().String()+"@65000",
		"--bgp-peer", r2Addr.Addr().String()+"@65002", "--bgp-learn", "0s", "--bgp-password", stubPassword)
	d.mustCLI(t, "vip", "add", vipTCP, "--forward", "ipip")
	d.mustCLI(t, append([]string{"backend", "add", vipTCP, lab.Backends[0].Addr.Addr().String()}, fastCheck...)...)
	waitRoutes := func(b *netlab.BIRD, prefix string, want int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for birdRoutes(t, b, "lb1", prefix) != want {
			if time.Now().After(deadline) {
				out, _ := b.Summary(context.Background())
				all, _ := b.Show(context.Background(), "route", "all")
				t.Fatalf("BIRD holds %d routes of %s from the LB, want %d; its sessions:\n%s\nits routes:\n%s", birdRoutes(t, b, "lb1", prefix), prefix, want, out, all)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitRoutes(b1, "10.77.1.100/32", 1)
	waitRoutes(b2, "10.77.1.100/32", 1)
	pid := d.cmd.Process.Pid
	before := rssMiB(t, pid)
	time.Sleep(3 * time.Second) // long enough for any transit route to have been re-advertised
	leaked1, leaked2 := birdRoutes(t, b1, "lb1", "10.202.0.0/16"), birdRoutes(t, b2, "lb1", "10.201.0.0/16")
	after := rssMiB(t, pid)
	t.Logf("two routers exporting 200 routes each over TCP MD5: each got the VIP; through the LB router 1 learned %d of router 2's, router 2 %d of router 1's; LB RSS %.1f → %.1f MiB",
		leaked1, leaked2, before, after)
	if leaked1 != 0 || leaked2 != 0 {
		t.Fatalf("the LB re-advertised routes between the routers: %d and %d", leaked1, leaked2)
	}
	if after > before+8 {
		t.Fatalf("the LB's memory grew from %.1f to %.1f MiB", before, after)
	}

	// Past the prefix limit, the session goes; the other keeps the VIP.
	conf := exportingBIRD(r2Addr.Addr(), 65002, lb, 202, 3200)
	if err := b2.Reconfigure(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for birdRoutes(t, b2, "lb1", "10.77.1.100/32") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("router 2's session with the LB still up after it sent 3 200 routes, past the limit of 1 000")
		}
		time.Sleep(50 * time.Millisecond)
	}
	peak := rssMiB(t, pid)
	st := bgpStatus(t, d)
	t.Logf("router 2 sent 3 200 routes: its session was shut down; peers %+v; LB RSS %.1f MiB", st.Peers, peak)
	if peak > before+32 {
		t.Fatalf("the LB's memory grew from %.1f to %.1f MiB with a router past the prefix limit", before, peak)
	}
	if n := birdRoutes(t, b1, "lb1", "10.77.1.100/32"); n != 1 {
		t.Fatalf("router 1 lost the VIP when router 2 went past the limit (%d routes)", n)
	}
}
