package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// vipWriters is the VIP the writers change (a small ring: 1 000 changes
// rebuild it on every node).
const vipWriters = "10.77.1.100:8080/tcp"

// TestClusterWriters: 50 writers spread over the three nodes make 1 000
// changes (each adds its own backend, drains and undrains it 18 times,
// and half of them delete it at the end) while b1's checks flap 10
// times. Every change lands exactly as expected, a change refused is
// refused as a named conflict, and afterwards every node holds the same
// state and byte-identical rings for every VIP: read back from each
// kernel by status, and in the digests `cluster status` shows.
func TestClusterWriters(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	lc.nodes[0].mustCLI(t, "vip", "add", vipWriters, "--forward", "ipip", "--ring-size", "4099")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	flapsDone := make(chan int)
	stop := make(chan struct{})
	go func() { flapsDone <- flapChecks(t, lc, stop) }()

	start := time.Now()
	var refused atomic.Int64
	var wg sync.WaitGroup
	for w := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := api.NewClient(lc.nodes[w%3].socket)
			addr := fmt.Sprintf("10.77.3.%d", w+1)
			do := func(path string, body any) {
				for {
					err := cl.Do(ctx, "POST", path, nil, body, nil)
					if err == nil {
						return
					}
					if !strings.Contains(err.Error(), "conflicting change") || ctx.Err() != nil {
						t.Errorf("writer %d: %v", w, err)
						return
					}
					refused.Add(1) // named as a conflict: the writer tries again
				}
			}
			do("/v1/backends", api.BackendAddRequest{VIP: vipWriters, Backend: state.Backend{Addr: addr, Weight: 1,
				MAC: "02:00:00:00:00:01", Check: state.Check{Type: "none"}}})
			for i := range 18 {
				action := "drain"
				if i%2 == 1 {
					action = "undrain"
				}
				do("/v1/backends/action", api.BackendActionRequest{VIP: vipWriters, Addr: addr, Action: action})
			}
			last := "drain"
			if w%2 == 0 {
				last = "del"
			}
			do("/v1/backends/action", api.BackendActionRequest{VIP: vipWriters, Addr: addr, Action: last})
		}()
	}
	wg.Wait()
	writes := time.Since(start)
	flaps := <-flapsDone // 10 flaps, during the writes and after
	close(stop)
	if t.Failed() {
		t.FailNow()
	}
	want := map[string]bool{} // backend → drained
	for w := 1; w < 50; w += 2 {
		want[fmt.Sprintf("10.77.3.%d", w+1)] = true
	}
	lc.waitSameRings(t, 30*time.Second)
	st := lc.waitClusterStatus(t, "every node at the final revision with equal digests")
	for i, n := range lc.nodes {
		var s state.State
		if err := api.NewClient(n.socket).Do(ctx, "GET", "/v1/state", nil, nil, &s); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, v := range s.VIPs {
			if v.VIP == vipWriters {
				for _, b := range v.Backends {
					got[b.Addr] = b.Drain
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("node %d holds %v, want %v", i, got, want)
		}
	}
	t.Logf("50 writers over 3 nodes: 1000 changes in %v landed as expected (%d refused as conflicts and retried), b1's checks flapped %d times; final revision %d, every node's rings equal: %v",
		writes.Round(time.Millisecond), refused.Load(), flaps, st.Revision, st.Nodes[0].RingSHA256)
}

// flapChecks makes b1 fail every node's checks and pass them again until
// stop, waiting for each verdict on node A, and returns the flap count.
func flapChecks(t *testing.T, lc *labCluster, stop <-chan struct{}) int {
	b1 := lc.lab.Backends[0]
	addr := b1.Addr.Addr().String()
	n := 0
	for n < 10 {
		select {
		case <-stop:
			return n
		default:
		}
		nft(t, b1.Host, "add", "table", "inet", "sluicet")
		nft(t, b1.Host, "add", "chain", "inet", "sluicet", "in", "{ type filter hook input priority 0 ; }")
		nft(t, b1.Host, "add", "rule", "inet", "sluicet", "in", "tcp", "dport", "7", "drop")
		waitAPIStatus(t, lc.nodes[0], func(st api.Status) bool { return backendState(st, vipTCP, addr).State == "down" })
		nft(t, b1.Host, "delete", "table", "inet", "sluicet")
		waitAPIStatus(t, lc.nodes[0], func(st api.Status) bool { return backendState(st, vipTCP, addr).State == "up" })
		n++
	}
	return n
}

// waitAPIStatus polls d's status over its API socket (no CLI process per
// poll) until ok; it fails after 10 s.
func waitAPIStatus(t testing.TB, d *daemonProc, ok func(api.Status) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st api.Status
		if err := api.NewClient(d.socket).Do(context.Background(), "GET", "/v1/status", nil, nil, &st); err != nil {
			t.Fatalf("status: %v", err)
		}
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status did not get there in 10 s: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
