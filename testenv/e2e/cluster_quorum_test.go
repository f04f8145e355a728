package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestClusterPartialView: node C alone cannot reach b2 (nftables drops
// C's own traffic to it; forwarded packets leave by XDP). With the
// majority rule no node's ring changes, and C, which sees b2 down, sends
// it no new flow of its own: its data plane steps past b2's slots. With
// the local rule, only C's ring changes.
func TestClusterPartialView(t *testing.T) {
	for _, tc := range []struct {
		quorum      string
		changedRing [3]bool
	}{
		{"majority", [3]bool{false, false, false}},
		{"local", [3]bool{false, false, true}},
	} {
		t.Run(tc.quorum, func(t *testing.T) {
			lc := newLabCluster(t, 3, 3, "--health-quorum", tc.quorum)
			c := lc.lab.Nodes[2]
			b2 := lc.lab.Backends[1]
			var before [3]map[string]string
			for i, n := range lc.nodes {
				_, before[i] = rings(t, n)
			}
			nft(t, c, "add", "table", "inet", "sluicet")
			nft(t, c, "add", "chain", "inet", "sluicet", "out", "{ type filter hook output priority 0 ; }")
			nft(t, c, "add", "rule", "inet", "sluicet", "out", "ip", "daddr", b2.Addr.Addr().String(), "drop")
			lc.nodes[2].waitStatus(t, "C sees b2 down", func(st api.Status) bool {
				return backendState(st, vipTCP, b2.Addr.Addr().String()).State == "down"
			})
			// Every node has C's view (the quorum rule decides what that
			// does to the rings); the rings are checked throughout.
			for _, n := range lc.nodes {
				waitReport(t, n, "n3", func(r api.ClusterNode) bool { return r.Health[vipTCP][b2.Addr.Addr().String()] == "down" })
			}
			checkRings := func() {
				for i, n := range lc.nodes {
					_, now := rings(t, n)
					if changed := now[vipTCP] != before[i][vipTCP]; changed != tc.changedRing[i] {
						t.Fatalf("node %d: ring changed %v, want %v", i, changed, tc.changedRing[i])
					}
				}
			}
			// Through C, no new flow reaches b2.
			route := func(via string) {
				if out, err := lc.lab.Client.Command(context.Background(), "ip", "route", "replace", "10.77.1.0/24", "via", via).CombinedOutput(); err != nil {
					t.Fatalf("route via %s: %v\n%s", via, err, out)
				}
			}
			route(c.Addr.Addr().String())
			defer route(lc.lab.LB.Addr.Addr().String())
			per := map[string]int{}
			for i := range 60 {
				if i%10 == 0 {
					checkRings()
				}
				conn, err := dialVIP(t, lc.lab, vipAP)
				if err != nil {
					t.Fatalf("a new connection through C: %v", err)
				}
				conn.c.Close()
				per[conn.backend]++
			}
			t.Logf("%s: 60 new connections through C: %v; rings changed (A, B, C): %v", tc.quorum, per, tc.changedRing)
			if per[b2.Name] != 0 {
				t.Errorf("C sent %d new flows to b2, which it sees down", per[b2.Name])
			}
			nft(t, c, "delete", "table", "inet", "sluicet")
			lc.nodes[2].waitStatus(t, "C sees b2 up again", allUp(6))
			lc.waitClusterStatus(t, "every node back at the same rings")
			lc.waitSameRings(t, 5*time.Second)
		})
	}
}

// waitReport waits until node d's cluster status holds a report of node
// name that satisfies ok.
func waitReport(t testing.TB, d *daemonProc, name string, ok func(api.ClusterNode) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := clusterStatus(t, d)
		for _, r := range st.Nodes {
			if r.Name == name && ok(r) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for node %s's report: %+v", name, st.Nodes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterBackendKilled: a backend's server killed 20 times; each
// time all three nodes converge to the same ring without it, p99 at most
// 500 ms from the kill, and none of 200 long-lived connections to the
// healthy backends (b1 and b2) breaks.
func TestClusterBackendKilled(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	victim := lc.lab.Backends[2]
	// 200 long-lived connections to the backends that stay healthy.
	var healthy []conn
	for len(healthy) < 200 {
		c, err := dialVIP(t, lc.lab, vipAP)
		if err != nil {
			t.Fatalf("connection %d: %v", len(healthy), err)
		}
		if c.backend == victim.Name {
			c.c.Close()
			continue
		}
		healthy = append(healthy, c)
	}
	t.Cleanup(func() {
		for _, c := range healthy {
			c.c.Close()
		}
	})
	_, whole := rings(t, lc.nodes[0])
	var took []time.Duration
	for range 20 {
		t0 := time.Now()
		victim.StopServers(true)
		took = append(took, lc.waitConverged(t, func(r map[string]string) bool { return r[vipTCP] != whole[vipTCP] }).Sub(t0))
		if err := victim.StartServers(); err != nil {
			t.Fatal(err)
		}
		lc.waitConverged(t, func(r map[string]string) bool { return equalMaps(r, whole) })
	}
	p50, p99 := testutil.Percentile(took, .5), testutil.Percentile(took, .99)
	t.Logf("b3 killed 20 times: all three nodes on the same ring without it after p50 %v, p99 %v, max %v", p50, p99, slices.Max(took))
	if p99 > 500*time.Millisecond {
		t.Errorf("convergence p99 %v, want at most 500ms", p99)
	}
	n, per := broken(healthy)
	t.Logf("long-lived connections to b1 and b2: %d of %d broken", n, len(healthy))
	if n != 0 {
		t.Errorf("%d of %d long-lived connections to healthy backends broken: %v", n, len(healthy), per)
	}
}

// waitConverged polls every node's kernel ring until all three are equal
// and satisfy ok, and returns when that was first seen.
func (lc *labCluster) waitConverged(t testing.TB, ok func(map[string]string) bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := time.Now()
		_, first := rings(t, lc.nodes[0])
		same := ok(first)
		for _, n := range lc.nodes[1:] {
			if !same {
				break
			}
			_, r := rings(t, n)
			same = r[vipTCP] == first[vipTCP]
		}
		if same {
			return now
		}
		if now.After(deadline) {
			t.Fatal("the nodes did not converge within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
