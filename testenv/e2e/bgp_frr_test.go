package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/testenv"
)

// TestFRR: the nodes against FRR 8 (zebra, bfdd and bgpd) with the FRR
// configuration docs/scale-out.md gives: the router's kernel routes to
// the VIP's /32 and to an IPv6 VIP's /128 get three next hops, and a
// node killed (link down, then kill -9) leaves them within 1 s through
// BFD, 10 runs, with no long-lived connection broken and wrk failing
// only inside the detection windows. The first wait is 15 s, not 5:
// against FRR 8.4 a session's start can flap (docs/scale-out.md).
func TestFRR(t *testing.T) {
	lc := newLabClusterOn(t, netlab.LabOptions{Backends: 3, Nodes: 3, Router: true}, 3, bgpArgs("--bgp-learn", "500ms", "--bgp-bfd")...)
	conf := testenv.LabFRRConfig(lc.lab, true)
	doc, err := os.ReadFile("../../docs/scale-out.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), conf) {
		t.Fatalf("docs/scale-out.md does not give the FRR config this test runs:\n%s", conf)
	}
	start := time.Now()
	f, err := testenv.StartFRR(context.Background(), lc.lab.Router, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(f.Log())
		}
		f.Stop()
	})
	waitHops(t, lc.lab.Router, f, "10.77.1.100", 3, 15*time.Second)
	t.Logf("FRR's route to 10.77.1.100 has 3 next hops %v after FRR started", time.Since(start))
	lc.nodes[0].mustCLI(t, "vip", "add", "[fd77:1::100]:7/tcp", "--forward", "ipip")
	for _, be := range lc.lab.Backends {
		lc.nodes[0].mustCLI(t, append([]string{"backend", "add", "[fd77:1::100]:7/tcp", be.Addr6.Addr().String()}, fastCheck...)...)
	}
	t.Logf("FRR's route to fd77:1::100 has 3 next hops %v after the IPv6 VIP was added", waitHops(t, lc.lab.Router, f, "fd77:1::100", 3, 15*time.Second))
	gaps, windows := killNodes(t, lc, f, 10, func(n int) { waitBFD(t, lc.nodes[n], f) })
	checkGaps(t, "FRR, BFD 100ms x 3", gaps)
	windows.check(t)
}
