package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// flowSyncArgs are the flags of flow sync with a fresh key of mode 0400.
func flowSyncArgs(t testing.TB) []string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "flow.key")
	if err := os.WriteFile(key, []byte("flow-sync-test-key-0123456789"), 0o400); err != nil {
		t.Fatal(err)
	}
	return []string{"--flow-sync-key", key}
}

// TestBGPNodeLostWhileRingChanges: 500 long-lived connections over three
// nodes behind the router; then b1 is drained and b4 added (every ring
// changes) and node 1 is lost (link down, kill -9), so the router rehashes
// its flows to nodes whose rings now name other backends for many of
// them. With flow sync the survivors hold node 1's entries: 0 break.
// Without it (the control) the number that broke is reported.
func TestBGPNodeLostWhileRingChanges(t *testing.T) {
	for _, c := range []struct {
		name string
		sync bool
	}{{"flow sync", true}, {"control without flow sync", false}} {
		t.Run(c.name, func(t *testing.T) {
			extra := []string{"--bgp-learn", "500ms"}
			if c.sync {
				extra = append(extra, flowSyncArgs(t)...)
			}
			lc, b := newBGPCluster(t, 4, 3, false, extra...)
			router := lc.lab.Router
			waitHops(t, router, b, "10.77.1.100", 3, 15*time.Second)
			cs := openConns(t, lc.lab, 500)
			a := lc.nodes[1]
			a.mustCLI(t, "backend", "drain", vipTCP, lc.lab.Backends[0].Addr.Addr().String())
			a.mustCLI(t, append([]string{"backend", "add", vipTCP, lc.lab.Backends[3].Addr.Addr().String()}, fastCheck...)...)
			lc.waitSameRings(t, 20*time.Second)
			if err := lc.lab.Nodes[0].SetLinkUp(false); err != nil {
				t.Fatal(err)
			}
			lc.nodes[0].kill9(t)
			waitHops(t, router, b, "10.77.1.100", 2, 10*time.Second)
			n, per := broken(cs)
			t.Logf("%s: node 1 lost after the ring changed: %d of %d long-lived connections broke", c.name, n, len(cs))
			if c.sync && n != 0 {
				t.Fatalf("%d of %d connections broke with flow sync: %v", n, len(cs), per)
			}
		})
	}
}

// TestBGPNodeJoinsUnderLoad: node 3 leaves (SIGTERM), 500 long-lived
// connections open over nodes 1 and 2, the ring changes (b1 drained, b4
// added), and node 3 comes back: it copies the other nodes' tables
// before it announces, so when the router moves a third of the flows to
// it, 0 of 500 break.
func TestBGPNodeJoinsUnderLoad(t *testing.T) {
	lc, b := newBGPCluster(t, 4, 3, false, append([]string{"--bgp-learn", "500ms"}, flowSyncArgs(t)...)...)
	router := lc.lab.Router
	waitHops(t, router, b, "10.77.1.100", 3, 15*time.Second)
	lc.nodes[2].stop()
	waitHops(t, router, b, "10.77.1.100", 2, 10*time.Second)
	cs := openConns(t, lc.lab, 500)
	a := lc.nodes[0]
	a.mustCLI(t, "backend", "drain", vipTCP, lc.lab.Backends[0].Addr.Addr().String())
	a.mustCLI(t, append([]string{"backend", "add", vipTCP, lc.lab.Backends[3].Addr.Addr().String()}, fastCheck...)...)
	lc.restart(t, 2)
	took := waitHops(t, router, b, "10.77.1.100", 3, 20*time.Second)
	var copied string
	for _, e := range lc.nodes[2].events(t) {
		if strings.HasPrefix(e.Reason, "flow sync: copied") {
			copied = e.Reason
		}
	}
	if copied == "" || strings.HasPrefix(copied, "flow sync: copied 0 ") {
		t.Fatalf("node 3 announced without copying the cluster's flows (event %q)", copied)
	}
	n, per := broken(cs)
	t.Logf("node 3 rejoined under 500 connections: %s; announced %v after its start; %d of %d broke", copied, took.Round(time.Millisecond), n, len(cs))
	if n != 0 {
		t.Fatalf("%d of %d connections broke when node 3 joined: %v", n, len(cs), per)
	}
}
