package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// TestClusterPropagation: 100 changes made through node A's CLI reach
// the kernel rings of all three nodes; p99 from the CLI's return to the
// ring read back from each node's maps is at most 200 ms.
func TestClusterPropagation(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	a := lc.nodes[0]
	b2 := lc.lab.Backends[1].Addr.Addr().String()
	var lags []time.Duration
	for i := range 100 {
		action := "drain"
		if i%2 == 1 {
			action = "undrain"
		}
		a.mustCLI(t, "backend", action, vipTCP, b2)
		t0 := time.Now()
		_, want := rings(t, a)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, n := range lc.nodes[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, got := rings(t, n)
					if got[vipTCP] == want[vipTCP] {
						mu.Lock()
						lags = append(lags, time.Since(t0))
						mu.Unlock()
						return
					}
					if time.Since(t0) > 10*time.Second {
						t.Errorf("change %d (%s b2) did not reach a node in 10 s", i, action)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	p50, p99 := lags[len(lags)/2], lags[len(lags)*99/100]
	t.Logf("100 changes through node A: CLI return -> ring in the kernel of nodes B and C: p50 %v, p99 %v, max %v (%d samples)",
		p50, p99, lags[len(lags)-1], len(lags))
	if p99 > 200*time.Millisecond {
		t.Errorf("propagation p99 %v, want at most 200ms", p99)
	}
	lc.waitSameRings(t, 5*time.Second)
	st := lc.waitClusterStatus(t, "every node's report at the same revision with the same digests")
	// The cluster's metrics, on every node: three nodes, at the state's
	// revision, rings matching, etcd up, and one coordinator among them.
	coordinators := 0.0
	for i, h := range lc.lab.Nodes {
		s := newScraper(h)
		if n := s.value(t, "sluice_cluster_nodes"); n != 3 {
			t.Errorf("node %d: sluice_cluster_nodes %v, want 3", i, n)
		}
		if r := s.value(t, "sluice_cluster_applied_revision", `node="n3"`); r != float64(st.Revision) {
			t.Errorf("node %d: sluice_cluster_applied_revision{node=n3} %v, want %d", i, r, st.Revision)
		}
		if m := s.value(t, "sluice_cluster_ring_mismatch", `vip="`+vipTCP+`"`); m != 0 {
			t.Errorf("node %d: sluice_cluster_ring_mismatch %v", i, m)
		}
		if up := s.value(t, "sluice_store_up"); up != 1 {
			t.Errorf("node %d: sluice_store_up %v", i, up)
		}
		coordinators += s.value(t, "sluice_coordinator")
	}
	if coordinators != 1 {
		t.Errorf("sluice_coordinator sums to %v over the nodes, want 1", coordinators)
	}
	// The shipped dashboard's cluster panels query series a node exports.
	dash, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`sluice_(cluster_[a-z_]+|store_up|coordinator)`).FindAllString(string(dash), -1)
	if len(names) < 5 {
		t.Fatalf("the dashboard queries %d cluster series, want the 5", len(names))
	}
	for _, name := range names {
		newScraper(lc.lab.Nodes[1]).value(t, name)
	}
}

// wrkFor runs wrk from the client against the HTTP VIP for d and returns
// its requests and failures (socket errors and non-2xx answers).
func wrkFor(t testing.TB, lc *labCluster, d time.Duration) (requests, failed int) {
	t.Helper()
	requests, failed, err := wrkRun(lc, d)
	if err != nil {
		t.Fatal(err)
	}
	return requests, failed
}

// wrkRun is wrkFor for goroutines: it returns wrk's failure instead.
func wrkRun(lc *labCluster, d time.Duration) (requests, failed int, err error) {
	out, err := lc.lab.Client.Command(context.Background(), "wrk", "-t1", "-c8", "-d"+d.String(), "--timeout", "1s",
		"http://"+netlab.LabVIP4.String()+"/").CombinedOutput()
	m := wrkRequests.FindSubmatch(out)
	if err != nil || m == nil {
		return 0, 0, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	requests = atoi(m[1])
	if m := wrkSocket.FindSubmatch(out); m != nil {
		failed = atoi(m[1]) + atoi(m[2]) + atoi(m[3]) + atoi(m[4])
	}
	if m := wrkStatus.FindSubmatch(out); m != nil {
		failed += atoi(m[1])
	}
	return requests, failed, nil
}

// TestClusterEtcdLost: with one of three etcd members killed, forwarding
// and changes go on. With all three stopped for 30 s, wrk through the VIP
// fails no request, changes are refused with "store unreachable since",
// a node restarted meanwhile forwards from the state it applied last, and
// a backend killed during the outage is still taken out locally. When
// etcd is back, every node converges to equal rings without a restart.
func TestClusterEtcdLost(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	a, b := lc.nodes[0], lc.nodes[1]
	a.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip")
	for _, be := range lc.lab.Backends {
		a.mustCLI(t, append([]string{"backend", "add", vipHTTP, be.Addr.Addr().String()}, fastCheck...)...)
	}
	for _, n := range lc.nodes {
		n.waitStatus(t, "every backend up", allUp(9))
	}
	lc.waitSameRings(t, 10*time.Second)
	b1 := lc.lab.Backends[0].Addr.Addr().String()

	if err := lc.etcd.Members[0].Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if req, failed := wrkFor(t, lc, 3*time.Second); failed != 0 || req == 0 {
		t.Fatalf("one etcd member killed: wrk %d requests, %d failed", req, failed)
	}
	b.mustCLI(t, "backend", "drain", vipTCP, b1)
	lc.waitSameRings(t, 5*time.Second)
	t.Log("one of three etcd members killed: a change through node B reached every node")

	for _, m := range lc.etcd.Members[1:] {
		if err := m.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	outage := time.Now()
	type result struct{ req, failed int }
	wrkDone := make(chan result, 1)
	go func() {
		r, f := wrkFor(t, lc, 20*time.Second)
		wrkDone <- result{r, f}
	}()
	out, err := b.cli(t, "backend", "undrain", vipTCP, b1)
	if err == nil || !strings.Contains(out, "store unreachable since") {
		t.Fatalf("a change with etcd gone: %v\n%s", err, out)
	}
	t.Logf("a change with etcd gone is refused: %s", strings.TrimSpace(out))
	st := clusterStatus(t, b)
	if st.StoreUp || st.StoreDownSince == "" {
		t.Fatalf("cluster status with etcd gone: %+v", st)
	}

	// A node restarted while etcd is away forwards from its last state.
	_, before := rings(t, lc.nodes[2])
	lc.nodes[2].kill9(t)
	lc.restart(t, 2)
	if _, after := rings(t, lc.nodes[2]); !equalMaps(before, after) {
		t.Fatalf("node C restarted without etcd: rings %v, were %v", after, before)
	}

	r := <-wrkDone
	t.Logf("all etcd members stopped: wrk through the VIP for 20 s of it: %d requests, %d failed", r.req, r.failed)
	if r.failed != 0 || r.req == 0 {
		t.Errorf("wrk during the etcd outage: %d requests, %d failed", r.req, r.failed)
	}

	// A backend killed now is still taken out, by each node's own checks.
	b3 := lc.lab.Backends[2]
	b3.StopServers(true)
	for _, n := range lc.nodes {
		n.waitStatus(t, "b3 unusable on every node", func(st api.Status) bool {
			for _, v := range st.VIPs {
				for _, be := range v.Backends {
					if be.Addr == b3.Addr.Addr().String() && be.Usable {
						return false
					}
				}
			}
			return true
		})
	}
	for range 30 {
		c, err := dialVIP(t, lc.lab, vipAP)
		if err != nil {
			t.Fatalf("a new connection with etcd gone and b3 dead: %v", err)
		}
		c.c.Close()
		if c.backend == b3.Name {
			t.Fatalf("a new connection reached b3, dead for %v", time.Since(outage))
		}
	}
	t.Logf("b3 killed %v into the outage: unusable on every node, and 30 new connections went elsewhere", time.Since(outage).Round(time.Second))
	time.Sleep(time.Until(outage.Add(30 * time.Second))) // the outage lasts 30 s
	for _, m := range lc.etcd.Members {
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lc.etcd.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b3.StartServers(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	lc.waitClusterStatus(t, "every node back on etcd, at one revision with equal digests")
	t.Logf("etcd back after %v: every node reconnected and converged in %v", back.Sub(outage).Round(time.Second), time.Since(back).Round(time.Millisecond))
	b.mustCLI(t, "backend", "undrain", vipTCP, b1)
	lc.waitSameRings(t, 10*time.Second)
	lc.waitClusterStatus(t, "every node converged after a change")
}
