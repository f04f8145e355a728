package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// xdpAttached reports whether h's lab interface has an XDP program.
func xdpAttached(t testing.TB, h *netlab.Host) bool {
	t.Helper()
	x := linkXDP(t, h)
	return x != nil && x.Attached
}

// linkXDP is the XDP attachment of h's lab interface, or nil.
func linkXDP(t testing.TB, h *netlab.Host) *netlink.LinkXdp {
	t.Helper()
	idx, err := h.Index()
	if err != nil {
		t.Fatal(err)
	}
	var x *netlink.LinkXdp
	err = h.Netlink(func(nh *netlink.Handle) error {
		l, err := nh.LinkByIndex(idx)
		if err == nil {
			x = l.Attrs().Xdp
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// wrkLoop runs wrk against the HTTP VIP in one-second slices until the
// returned func is called, which waits for the slice under way and
// returns them all. A test that fails first stops it too.
func wrkLoop(t testing.TB, lc *labCluster) (stop func() []wrkSlice) {
	var slices []wrkSlice
	var wg sync.WaitGroup
	var once sync.Once
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			sl, err := wrkSecond(lc.lab.Client)
			if err != nil {
				t.Error(err)
				return
			}
			slices = append(slices, sl)
		}
	}()
	stop = func() []wrkSlice {
		once.Do(func() { close(done) })
		wg.Wait()
		return slices
	}
	t.Cleanup(func() { stop() })
	return stop
}

// wrkTotal adds up slices' requests and failures.
func wrkTotal(slices []wrkSlice) (requests, failed int) {
	for _, sl := range slices {
		requests += sl.requests
		failed += sl.errors
	}
	return requests, failed
}

// TestBGPDrainAndSIGTERM: under wrk and 500 long-lived connections, 20
// runs of `sluice node drain`/undrain and 20 of SIGTERM and restart: 0
// failed requests, 0 broken connections, and on SIGTERM the router's
// route left before the XDP program was detached. (daemonProc.stop sends
// SIGINT, which the binary handles exactly as SIGTERM: both end the same
// signal.NotifyContext in cmd/sluice/main.go.)
func TestBGPDrainAndSIGTERM(t *testing.T) {
	lc, b := newBGPCluster(t, 3, 3, false, "--bgp-learn", "500ms")
	router := lc.lab.Router
	serveHTTP(t, lc, b)
	cs := openConns(t, lc.lab, 500)
	stopWrk := wrkLoop(t, lc)
	const runs = 20
	for i := range runs {
		n := i % len(lc.nodes)
		lc.nodes[n].mustCLI(t, "node", "drain")
		waitHops(t, router, b, "10.77.1.100", 2, 5*time.Second)
		lc.nodes[n].mustCLI(t, "node", "undrain")
		waitHops(t, router, b, "10.77.1.100", 3, 5*time.Second)
	}
	var margins []time.Duration
	for i := range runs {
		n := i % len(lc.nodes)
		done := make(chan struct{})
		go func() { lc.nodes[n].stop(); close(done) }()
		var gone, detached time.Time
		start := time.Now()
		for detached.IsZero() {
			if gone.IsZero() && len(nextHops(t, router, "10.77.1.100")) == 2 {
				gone = time.Now()
			}
			if !xdpAttached(t, lc.lab.Nodes[n]) {
				detached = time.Now()
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("run %d: node %d still attached 10 s after SIGTERM", i, n+1)
			}
			time.Sleep(5 * time.Millisecond)
		}
		<-done
		if gone.IsZero() || !gone.Before(detached) {
			t.Fatalf("run %d: node %d detached at +%v, the route left at %v", i, n+1, detached.Sub(start), gone)
		}
		margins = append(margins, detached.Sub(gone))
		lc.restart(t, n)
		waitHops(t, router, b, "10.77.1.100", 3, 15*time.Second)
	}
	requests, failed := wrkTotal(stopWrk())
	k, per := broken(cs)
	t.Logf("%d drains and %d SIGTERMs: wrk %d requests, %d failed; %d of %d long-lived connections broke; route gone → detach margin min %v",
		runs, runs, requests, failed, k, len(cs), slicesMin(margins))
	if failed != 0 || k != 0 {
		t.Fatalf("%d requests failed, %d connections broke: %v", failed, k, per)
	}
}

func slicesMin(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}

// TestBGPDrain50: 50 runs of `sluice node drain` and undrain, over the
// three nodes in turn (BGP with BFD, no flow sync), each state held for
// 500 ms under wrk through the router in one-second slices: 0 failed
// requests. (Issue 25 item 13 saw 18 read errors in 1 of 5 runs of a
// drain like these; this has not reproduced them.)
func TestBGPDrain50(t *testing.T) {
	lc, b := newBGPCluster(t, 3, 3, true, "--bgp-learn", "500ms", "--bgp-bfd")
	router := lc.lab.Router
	serveHTTP(t, lc, b)
	stopWrk := wrkLoop(t, lc)
	const runs = 50
	t0 := time.Now()
	var marks []string
	for i := range runs {
		n := i % len(lc.nodes)
		from := time.Since(t0)
		lc.nodes[n].mustCLI(t, "node", "drain")
		waitHops(t, router, b, "10.77.1.100", 2, 5*time.Second)
		time.Sleep(500 * time.Millisecond) // load on the other two
		lc.nodes[n].mustCLI(t, "node", "undrain")
		waitHops(t, router, b, "10.77.1.100", 3, 5*time.Second)
		time.Sleep(500 * time.Millisecond) // load on all three
		marks = append(marks, fmt.Sprintf("run %d node %d +%v..+%v", i, n+1, from.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond)))
	}
	slices := stopWrk()
	requests, failed := wrkTotal(slices)
	for _, sl := range slices {
		if sl.errors > 0 {
			t.Logf("wrk slice +%v..+%v: %d failed", sl.from.Sub(t0).Round(time.Millisecond), sl.to.Sub(t0).Round(time.Millisecond), sl.errors)
		}
	}
	t.Logf("%d drains and undrains: wrk %d requests, %d failed", runs, requests, failed)
	if failed != 0 {
		t.Fatalf("%d requests failed; runs:\n%s", failed, strings.Join(marks, "\n"))
	}
}
