package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/testenv/testutil"
)

// notifySocket listens as systemd's notify socket does and records when
// each WATCHDOG=1 ping arrived.
type notifySocket struct {
	path  string
	mu    sync.Mutex
	pings []time.Time
}

func listenNotify(t testing.TB) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify")}
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := ln.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:k]), "WATCHDOG=1") {
				n.mu.Lock()
				n.pings = append(n.pings, time.Now())
				n.mu.Unlock()
			}
		}
	}()
	return n
}

// longestGap is the longest time without a ping between from and to.
func (n *notifySocket) longestGap(from, to time.Time) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	var gap time.Duration
	last := from
	for _, p := range n.pings {
		if p.Before(from) || p.After(to) {
			continue
		}
		gap, last = max(gap, p.Sub(last)), p
	}
	return max(gap, to.Sub(last))
}

// TestClusterEtcdLostNeverStalls: with every etcd member stopped, 8
// changes in parallel through node 1 (each waits for etcd's 3 s timeout,
// one after another) hold no lock that health, the announcer or the
// watchdog need. Meanwhile a backend is killed 10 times: its verdict
// reaches node 1's maps in ≤ 300 ms p99 from the kill; then node 1's
// interface goes down and the router drops it within the BFD bound; and
// the watchdog (1 s, as systemd runs it) is pinged all along. On the old
// code the changes held the daemon's lock for 24 s and the watchdog
// stopped being pinged.
func TestClusterEtcdLostNeverStalls(t *testing.T) {
	lc, b := newBGPCluster(t, 3, 3, true, "--bgp-learn", "500ms", "--bgp-bfd")
	host, dir := lc.lab.Nodes[0], lc.nodes[0].stateDir
	lc.nodes[0].stop()
	notify := listenNotify(t)
	cmd := host.Command(t.Context(), sluiceBin, daemonArgs(lc.lab, host, dir, lc.args[0]...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.path, "WATCHDOG_USEC=1000000")
	a := startDaemonCmd(t, cmd, dir)
	lc.nodes[0] = a
	a.waitStatus(t, "every backend up", allUp(6))
	waitHops(t, lc.lab.Router, b, "10.77.1.100", 3, 20*time.Second)
	waitBFD(t, a, b)
	events := a.follow(t)

	for _, m := range lc.etcd.Members {
		if err := m.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	outage := time.Now()
	var wg sync.WaitGroup
	refused := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := a.cli(t, "vip", "add", "10.77.1.1"+string(rune('0'+i))+":80/tcp")
			if err == nil || !strings.Contains(out, "store unreachable since") {
				out = "not refused as unreachable: " + out
			}
			refused <- strings.TrimSpace(out)
		}()
	}

	b3 := lc.lab.Backends[2]
	addr := b3.Addr.Addr().String()
	var lat []time.Duration
	for range 10 {
		t0 := time.Now()
		b3.StopServers(false)
		down := events.next(t, addr, "down", t0)
		lat = append(lat, down.Marked.Sub(t0))
		if err := b3.StartServers(); err != nil {
			t.Fatal(err)
		}
		events.next(t, addr, "up", time.Now())
	}

	if err := host.SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	gone := waitHops(t, lc.lab.Router, b, "10.77.1.100", 2, 5*time.Second)
	wg.Wait()
	close(refused)
	end := time.Now()
	for out := range refused {
		if strings.HasPrefix(out, "not refused") {
			t.Errorf("a change with etcd gone: %s", out)
		}
	}
	gap := notify.longestGap(outage, end)
	p99 := testutil.Percentile(lat, .99)
	t.Logf("etcd gone for %v, 8 changes refused one after another: backend kill → node 1's maps p50 %v, p99 %v; interface down → route gone in %v; longest watchdog gap %v (1 s watchdog, pinged every 500 ms)",
		end.Sub(outage).Round(time.Millisecond), testutil.Percentile(lat, .5), p99, gone.Round(time.Millisecond), gap.Round(time.Millisecond))
	if strings.Contains(a.logText(), "watchdog: not pinging systemd") || gap > time.Second {
		t.Errorf("the watchdog went unpinged for %v (1 s would have restarted the daemon)", gap)
	}
	if p99 > 300*time.Millisecond {
		t.Errorf("a backend kill reached the maps in %v at p99, want ≤ 300 ms: %v", p99, lat)
	}
	if gone > time.Second {
		t.Errorf("the router dropped the node %v after its interface went down, want within the BFD bound (300 ms, 1 s with slack)", gone)
	}
}
