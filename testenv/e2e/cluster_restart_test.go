package e2e

import (
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// slowCheck is a check as operators often run them (HAProxy's default
// rise is 2 at 2 s): a node that starts stays undecided on each backend
// for seconds, long enough for its first node report to go out first.
var slowCheck = []string{"--check", "tcp", "--interval", "1s", "--timeout", "500ms", "--fall", "2", "--rise", "3"}

// TestClusterRestartKeepsRings: a node that joins or restarts does not
// vote on a backend until its own check has decided, so the node that
// serves meanwhile keeps every backend in its rings. A 2-node cluster,
// and a 3-node one with a node already down, behind BIRD under wrk and
// 500 long-lived connections; one node is stopped (SIGTERM: behind ECMP
// its XDP program is detached, so nothing is adopted) and started, then
// killed (kill -9) and started. The serving node's ring digests, read
// every 20 ms, never change; 0 requests fail and 0 connections break.
// On the old code the restarted node published "down" for every backend
// until its checks rose, so the serving node's rings emptied.
func TestClusterRestartKeepsRings(t *testing.T) {
	for _, c := range []struct {
		name       string
		nodes      int
		alreadyOut int // nodes stopped before the restarts (the last ones)
	}{{"2 nodes", 2, 0}, {"3 nodes, one down", 3, 1}} {
		t.Run(c.name, func(t *testing.T) {
			lc := newLabClusterChecked(t, netlab.LabOptions{Backends: 3, Nodes: c.nodes, Router: true}, 3, slowCheck,
				bgpArgs("--bgp-learn", "500ms")...)
			b := startBIRD(t, lc.lab, false)
			live := c.nodes - c.alreadyOut
			for _, n := range lc.nodes[live:] {
				n.stop()
			}
			a := lc.nodes[0]
			a.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip")
			for _, be := range lc.lab.Backends {
				a.mustCLI(t, append([]string{"backend", "add", vipHTTP, be.Addr.Addr().String()}, slowCheck...)...)
			}
			for _, n := range lc.nodes[:live] {
				n.waitStatus(t, "every backend up", allUp(3*3))
			}
			waitHops(t, lc.lab.Router, b, "10.77.1.100", live, 20*time.Second)
			_, want := rings(t, a)
			cs := openConns(t, lc.lab, 500)
			stopWrk := wrkLoop(t, lc)
			moved := watchRings(t, a, want)
			r := live - 1 // the node restarted; node 1 serves
			t0 := time.Now()
			mark := func(what string) { t.Logf("+%v %s", time.Since(t0).Round(time.Millisecond), what) }
			for _, how := range []string{"SIGTERM", "kill -9"} {
				mark(how)
				if how == "SIGTERM" {
					lc.nodes[r].stop()
				} else {
					lc.nodes[r].kill9(t)
				}
				waitHops(t, lc.lab.Router, b, "10.77.1.100", live-1, 10*time.Second)
				mark("route gone")
				lc.restart(t, r)
				mark("restarted")
				lc.nodes[r].waitStatus(t, "every backend up after the restart", allUp(3*3))
				mark("all up")
				waitHops(t, lc.lab.Router, b, "10.77.1.100", live, 20*time.Second)
				mark("route back")
				if _, got := rings(t, lc.nodes[r]); !equalMaps(got, want) {
					t.Fatalf("%s: the restarted node's rings %v, want the serving node's %v", how, got, want)
				}
			}
			changes := moved()
			sls := stopWrk()
			for _, sl := range sls {
				if sl.errors > 0 {
					t.Logf("wrk slice +%v..+%v: %d failed", sl.from.Sub(t0).Round(time.Millisecond), sl.to.Sub(t0).Round(time.Millisecond), sl.errors)
				}
			}
			requests, failed := wrkTotal(sls)
			k, per := broken(cs)
			t.Logf("%s: SIGTERM and kill -9 of node %d: the serving node's rings changed %d times; wrk %d requests, %d failed; %d of %d connections broke",
				c.name, r+1, len(changes), requests, failed, k, len(cs))
			if len(changes) != 0 {
				t.Errorf("the serving node's rings moved while node %d restarted (%d readings of 20 ms), first to %v", r+1, len(changes), changes[0])
			}
			if failed != 0 || k != 0 {
				t.Fatalf("%d requests failed, %d connections broke: %v", failed, k, per)
			}
		})
	}
}

// watchRings reads d's ring digests every 20 ms until the returned func
// is called, which returns every reading that differed from want.
func watchRings(t *testing.T, d *daemonProc, want map[string]string) (stop func() []map[string]string) {
	var moved []map[string]string
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			_, got, err := readRings(d)
			if err != nil {
				t.Errorf("status of the serving node: %v", err)
				return
			}
			if !equalMaps(got, want) {
				moved = append(moved, got)
			}
		}
	}()
	var once sync.Once
	stop = func() []map[string]string {
		once.Do(func() { close(done) })
		wg.Wait()
		return moved
	}
	t.Cleanup(func() { stop() })
	return stop
}
