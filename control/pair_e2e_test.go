package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/testenv"
)

// lbPair is a lab with two LB nodes running sluice as an HA pair: node 0
// on lb (priority 200), node 1 on lb2 (priority 100).
type lbPair struct {
	lab   *testenv.Lab
	nodes [2]*daemonProc
	hosts [2]*testenv.Host
	key   string
}

// newLBPair builds the pair with the first active of backends in the VIPs.
func newLBPair(t *testing.T, advert string, backends, active int, extra ...string) *lbPair {
	t.Helper()
	testenv.Require(t)
	lab, err := testenv.NewLab(context.Background(), nil, testenv.LabOptions{Backends: backends, Pair: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	lp := &lbPair{lab: lab, hosts: [2]*testenv.Host{lab.LB, lab.LB2}, key: filepath.Join(t.TempDir(), "ha.key")}
	if err := os.WriteFile(lp.key, []byte("a shared secret of the lab pair\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, prio := range []string{"200", "100"} {
		peer := lp.hosts[1-i].Addr.Addr().String()
		args := append([]string{"--ha-peer", peer, "--ha-priority", prio, "--ha-advert", advert, "--ha-key-file", lp.key}, extra...)
		lp.nodes[i] = startDaemonOn(t, lab, lp.hosts[i], "", args...)
	}
	lp.waitRoles(t, 0)
	m := lp.nodes[0]
	m.mustCLI(t, "vip", "add", vipTCP, "--forward", "ipip")
	m.mustCLI(t, "vip", "add", vipUDP, "--forward", "ipip")
	for _, b := range lab.Backends[:active] {
		m.mustCLI(t, append([]string{"backend", "add", vipTCP, b.Addr.Addr().String()}, fastCheck...)...)
		m.mustCLI(t, append([]string{"backend", "add", vipUDP, b.Addr.Addr().String(), "--check-port", "7"}, fastCheck...)...)
	}
	for _, n := range lp.nodes {
		n.waitStatus(t, "all backends up on both nodes (warm standby)", allUp(2*active))
	}
	lp.waitRoles(t, 0)
	return lp
}

func (p *daemonProc) ha(t testing.TB) control.HAStatus {
	t.Helper()
	var st control.HAStatus
	if err := json.Unmarshal([]byte(p.mustCLI(t, "ha", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitRoles waits until node m is master and the other a backup that
// hears it and has its state and flow table.
func (lp *lbPair) waitRoles(t testing.TB, m int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a, b := lp.nodes[m].ha(t), lp.nodes[1-m].ha(t)
		if a.Role == "master" && b.Role == "backup" && b.Synced && len(b.Peers) == 1 && b.Peers[0].Up &&
			len(a.Peers) == 1 && a.Peers[0].Up && a.Revision == b.Revision && !a.DualMaster {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d not master with a synced backup: %+v / %+v", m, a, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prober sends a UDP datagram to the VIP every millisecond from the client
// and records when answers arrive.
type prober struct {
	c     net.PacketConn
	mu    sync.Mutex
	times []time.Time
	stop  chan struct{}
	done  sync.WaitGroup
}

func startProber(t testing.TB, lab *testenv.Lab) *prober {
	t.Helper()
	c, err := lab.Client.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.UDPAddr{IP: testenv.LabVIP4.AsSlice(), Port: testenv.LabUDPPort}
	p := &prober{c: c, stop: make(chan struct{})}
	p.done.Add(2)
	go func() {
		defer p.done.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				c.WriteTo([]byte("probe"), dst)
			}
		}
	}()
	go func() {
		defer p.done.Done()
		buf := make([]byte, 64)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
			now := time.Now()
			p.mu.Lock()
			p.times = append(p.times, now)
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *prober) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.times)
}

// waitAnswers waits until n more answers than now arrived.
func (p *prober) waitAnswers(t testing.TB, n int, what string) {
	t.Helper()
	want := p.count() + n
	deadline := time.Now().Add(10 * time.Second)
	for p.count() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the VIP stopped answering the prober", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// finish stops the prober and returns the longest time without an answer.
func (p *prober) finish() time.Duration {
	close(p.stop)
	p.c.Close()
	p.done.Wait()
	var gap time.Duration
	for i := 1; i < len(p.times); i++ {
		gap = max(gap, p.times[i].Sub(p.times[i-1]))
	}
	return gap
}

func pct(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// TestLBPairTakeover: the master's link goes down 20 times (alternating
// nodes); the gap a 1 kHz prober of the VIP sees is ≤ 500 ms at p99 with
// the default 100 ms advert. The 50 ms advert's figure is reported.
// Planned `sluice ha failover` 20 times: gap ≤ 50 ms at p99.
func TestLBPairTakeover(t *testing.T) {
	for _, c := range []struct {
		advert string
		limit  time.Duration
	}{{"100ms", 500 * time.Millisecond}, {"50ms", 300 * time.Millisecond}} {
		t.Run("advert="+c.advert, func(t *testing.T) {
			lp := newLBPair(t, c.advert, 2, 2)
			runs := 20
			var gaps []time.Duration
			m := 0
			for i := range runs {
				p := startProber(t, lp.lab)
				p.waitAnswers(t, 50, "before the fault")
				if err := lp.hosts[m].SetLinkUp(false); err != nil {
					t.Fatal(err)
				}
				p.waitAnswers(t, 100, fmt.Sprintf("run %d: after the master's link went down", i))
				gap := p.finish()
				gaps = append(gaps, gap)
				if err := lp.hosts[m].SetLinkUp(true); err != nil {
					t.Fatal(err)
				}
				m = 1 - m
				lp.waitRoles(t, m) // no pre-emption: the node that came back stays backup
			}
			t.Logf("unplanned takeover (link down), advert %s, %d runs: gap p50 %v, p99 %v, max %v",
				c.advert, runs, pct(gaps, .5), pct(gaps, .99), slices.Max(gaps))
			if p99 := pct(gaps, .99); p99 > c.limit {
				t.Errorf("gap p99 %v > %v: %v", p99, c.limit, gaps)
			}
			if c.advert != "100ms" {
				return
			}
			gaps = gaps[:0]
			for range runs {
				p := startProber(t, lp.lab)
				p.waitAnswers(t, 50, "before the handoff")
				out := lp.nodes[m].mustCLI(t, "ha", "failover")
				p.waitAnswers(t, 100, "after the handoff: "+out)
				gaps = append(gaps, p.finish())
				m = 1 - m
				lp.waitRoles(t, m)
			}
			t.Logf("planned handoff (sluice ha failover), %d runs: gap p50 %v, p99 %v, max %v",
				runs, pct(gaps, .5), pct(gaps, .99), slices.Max(gaps))
			if p99 := pct(gaps, .99); p99 > 50*time.Millisecond {
				t.Errorf("planned gap p99 %v > 50ms: %v", p99, gaps)
			}
		})
	}
}

// openConns opens n long-lived connections to the TCP VIP.
func openConns(t *testing.T, lab *testenv.Lab, n int) []conn {
	t.Helper()
	var cs []conn
	for len(cs) < n {
		c, err := dialVIP(t, lab, vipAP)
		if err != nil {
			t.Fatalf("connection %d: %v", len(cs), err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.c.Close()
		}
	})
	return cs
}

// broken counts connections that no longer echo through their backend
// (a reset, or silence).
func broken(cs []conn) (int, map[string]int) {
	n := 0
	per := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := c.alive()
			mu.Lock()
			defer mu.Unlock()
			if !ok {
				n++
				per[c.backend]++
			}
		}()
	}
	wg.Wait()
	return n, per
}

func spread(cs []conn) map[string]int {
	m := map[string]int{}
	for _, c := range cs {
		m[c.backend]++
	}
	return m
}

// TestLBPairConnections: 500 long-lived TCP connections survive an
// unplanned takeover with an unchanged backend set, each on its backend.
// Then 500 connections opened through the new master survive a takeover
// right after a backend change (b2 drained, b4 added): the new ring would
// move some of them, so only the synced connection table keeps them.
func TestLBPairConnections(t *testing.T) {
	lp := newLBPair(t, "100ms", 4, 3)
	first := openConns(t, lp.lab, 500)
	if n, per := broken(first); n != 0 {
		t.Fatalf("before any takeover %d connections are broken: %v", n, per)
	}
	if err := lp.hosts[0].SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitRole(t, lp.nodes[1], "master")
	n, per := broken(first)
	t.Logf("unplanned takeover, unchanged backends: %d of %d connections broken %v (spread %v)", n, len(first), per, spread(first))
	if n != 0 {
		t.Fatalf("%d connections broken by the takeover: %v", n, per)
	}
	if err := lp.hosts[0].SetLinkUp(true); err != nil {
		t.Fatal(err)
	}
	lp.waitRoles(t, 1)

	// Connections through node 1 only: node 0 knows them by flow sync.
	second := openConns(t, lp.lab, 500)
	m := lp.nodes[1]
	m.mustCLI(t, "backend", "drain", vipTCP, lp.lab.Backends[1].Addr.Addr().String())
	m.mustCLI(t, append([]string{"backend", "add", vipTCP, lp.lab.Backends[3].Addr.Addr().String()}, fastCheck...)...)
	rev := m.ha(t).Revision
	lag := m.ha(t).SyncLag
	for lp.nodes[0].ha(t).Revision != rev {
		time.Sleep(time.Millisecond)
	}
	if err := lp.hosts[1].SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitRole(t, lp.nodes[0], "master")
	n, per = broken(second)
	t.Logf("takeover right after drain b2 + add b4: %d of %d connections broken %v (spread %v); last flow sync lag %s",
		n, len(second), per, spread(second), lag)
	if n != 0 {
		t.Fatalf("%d connections broken: %v", n, per)
	}
	if n, per := broken(first); n != 0 {
		t.Fatalf("%d of the first connections broken by the second takeover: %v", n, per)
	}
	// New connections avoid the drained backend and may use the new one.
	for range 50 {
		c, err := dialVIP(t, lp.lab, vipAP)
		if err != nil {
			t.Fatal(err)
		}
		c.c.Close()
		if c.backend == "b2" {
			t.Fatal("a new connection went to the drained b2")
		}
	}
}

func waitRole(t testing.TB, d *daemonProc, role string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.ha(t).Role != role {
		if time.Now().After(deadline) {
			t.Fatalf("node did not become %s: %+v", role, d.ha(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
