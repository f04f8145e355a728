package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// lbPair is a lab with two LB nodes running sluice as an HA pair: node 0
// on lb (priority 200), node 1 on lb2 (priority 100).
type lbPair struct {
	lab   *netlab.Lab
	nodes [2]*daemonProc
	hosts [2]*netlab.Host
	args  [2][]string // each node's daemon flags beyond daemonArgs'
	key   string
}

// newLBPair builds the pair with the first active of backends in the VIPs.
func newLBPair(t testing.TB, advert string, backends, active int, extra ...string) *lbPair {
	t.Helper()
	lab := newLab(t, netlab.LabOptions{Backends: backends, Pair: true})
	lp := &lbPair{lab: lab, hosts: [2]*netlab.Host{lab.LB, lab.LB2}, key: filepath.Join(t.TempDir(), "ha.key")}
	if err := os.WriteFile(lp.key, []byte("a shared secret of the lab pair\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, prio := range []string{"200", "100"} {
		peer := lp.hosts[1-i].Addr.Addr().String()
		lp.args[i] = append([]string{"--ha-peer", peer, "--ha-priority", prio, "--ha-advert", advert, "--ha-key-file", lp.key}, extra...)
		lp.nodes[i] = startDaemonOn(t, lab, lp.hosts[i], "", lp.args[i]...)
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
	lp.sameRings(t)
	return lp
}

// restart starts node i again, on its state directory, after it stopped.
func (lp *lbPair) restart(t testing.TB, i int) {
	t.Helper()
	lp.nodes[i] = startDaemonOn(t, lp.lab, lp.hosts[i], lp.nodes[i].stateDir, lp.args[i]...)
}

// sameRings checks that both nodes built byte-identical rings (the ring
// digest covers every slot as read back from the kernel).
func (lp *lbPair) sameRings(t testing.TB) {
	t.Helper()
	rings := func(d *daemonProc) map[string]string {
		m := map[string]string{}
		for _, v := range d.status(t).VIPs {
			m[v.VIP] = v.RingSHA256
		}
		return m
	}
	a, b := rings(lp.nodes[0]), rings(lp.nodes[1])
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("the nodes' rings differ:\n%v\n%v", a, b)
	}
}

func (p *daemonProc) ha(t testing.TB) api.HAStatus {
	t.Helper()
	var st api.HAStatus
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

func startProber(t testing.TB, lab *netlab.Lab) *prober {
	t.Helper()
	c, err := lab.Client.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.UDPAddr{IP: netlab.LabVIP4.AsSlice(), Port: netlab.LabUDPPort}
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

// unplannedGaps takes the master's link down runs times (alternating
// nodes, as the returning node stays backup) and returns the longest
// silence a 1 kHz prober of the VIP saw in each run.
func unplannedGaps(t testing.TB, lp *lbPair, runs int) []time.Duration {
	t.Helper()
	var gaps []time.Duration
	m := lp.master(t)
	for i := range runs {
		p := startProber(t, lp.lab)
		p.waitAnswers(t, 50, "before the fault")
		if err := lp.hosts[m].SetLinkUp(false); err != nil {
			t.Fatal(err)
		}
		p.waitAnswers(t, 100, fmt.Sprintf("run %d: after the master's link went down", i))
		gaps = append(gaps, p.finish())
		if err := lp.hosts[m].SetLinkUp(true); err != nil {
			t.Fatal(err)
		}
		m = 1 - m
		lp.waitRoles(t, m) // no pre-emption: the node that came back stays backup
	}
	return gaps
}

// plannedGaps runs `sluice ha failover` on the master runs times.
func plannedGaps(t testing.TB, lp *lbPair, runs int) []time.Duration {
	t.Helper()
	var gaps []time.Duration
	m := lp.master(t)
	for range runs {
		p := startProber(t, lp.lab)
		p.waitAnswers(t, 50, "before the handoff")
		out := lp.nodes[m].mustCLI(t, "ha", "failover")
		p.waitAnswers(t, 100, "after the handoff: "+out)
		gaps = append(gaps, p.finish())
		m = 1 - m
		lp.waitRoles(t, m)
		// The old master's XDP program forwards what still reaches it, so
		// the prober alone would not notice a handoff that never moved
		// the VIP: the client must now send to the new master.
		lp.waitNeighbour(t, m)
	}
	return gaps
}

// waitNeighbour waits until the client's neighbour entry for the VIP names
// node m's MAC (it followed the announcement).
func (lp *lbPair) waitNeighbour(t testing.TB, m int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := lp.lab.Client.Command(context.Background(), "ip", "neigh", "show", netlab.LabVIP4.String()).CombinedOutput()
		if strings.Contains(string(out), lp.hosts[m].MAC.String()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client's neighbour entry for the VIP is %q, want node %d's MAC %s", out, m, lp.hosts[m].MAC)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// master is the index of the current master.
func (lp *lbPair) master(t testing.TB) int {
	t.Helper()
	if lp.nodes[0].ha(t).Role == "master" {
		return 0
	}
	return 1
}

// openConns opens n long-lived connections to the TCP VIP.
func openConns(t *testing.T, lab *netlab.Lab, n int) []conn {
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
// (a reset, or silence). The deadline leaves room for one retransmission
// at TCP's 3 s fallback RTO (a connection whose SYN was retransmitted
// keeps it), as a lost first attempt is not a broken connection.
func broken(cs []conn) (int, map[string]int) {
	n := 0
	per := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.echoWithin(5 * time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				n++
				per[fmt.Sprintf("#%d %s: %v", i, c.backend, err)]++
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

// scraper reads a node's /metrics from inside its namespace.
type scraper struct {
	hc *http.Client
}

func newScraper(h *netlab.Host) *scraper {
	return &scraper{hc: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return h.Dial(ctx, network, "", addr)
	}}}}
}

// value returns the first sample of name carrying every label.
func (s *scraper) value(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	resp, err := s.hc.Get("http://127.0.0.1:9642/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if vs := metricSeries(string(body), name, labels...); len(vs) > 0 {
		return vs[0]
	}
	t.Fatalf("no metric %s%v in:\n%s", name, labels, body)
	return 0
}

// counters lists the data-plane outcome, flow sync and per-backend
// counters of both nodes, for failure messages.
func (lp *lbPair) counters() string {
	var out strings.Builder
	for _, h := range lp.hosts {
		resp, err := newScraper(h).hc.Get("http://127.0.0.1:9642/metrics")
		if err != nil {
			fmt.Fprintf(&out, "%s: %v\n", h.Name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, l := range strings.Split(string(b), "\n") {
			if (strings.HasPrefix(l, "sluice_xdp_packets_total") || strings.HasPrefix(l, "sluice_flow_sync_entries_total") ||
				strings.HasPrefix(l, "sluice_backend_packets_total")) && !strings.HasSuffix(l, " 0") {
				fmt.Fprintf(&out, "%s %s\n", h.Name, l)
			}
		}
	}
	return out.String()
}

// nft runs nft in a host's namespace.
func nft(t testing.TB, h *netlab.Host, args ...string) {
	t.Helper()
	if out, err := h.Command(context.Background(), "nft", args...).CombinedOutput(); err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
}

func (p *daemonProc) events(t testing.TB) []api.Event {
	t.Helper()
	var out []api.Event
	for _, line := range strings.Split(strings.TrimSpace(p.mustCLI(t, "events", "-o", "json")), "\n") {
		var e api.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}
