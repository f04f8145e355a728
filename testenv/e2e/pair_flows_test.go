package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

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
	// Node 1 synced the second set to node 0 and says so in its metrics.
	s := newScraper(lp.hosts[1])
	sent := s.value(t, "sluice_flow_sync_entries_total", `direction="sent"`, `result="ok"`)
	batches := s.value(t, "sluice_flow_sync_lag_seconds_count")
	lagSum := s.value(t, "sluice_flow_sync_lag_seconds_sum")
	t.Logf("node 1 synced %v entries in %v batches, mean lag %.1f ms", sent, batches, 1000*lagSum/batches)
	if sent < 500 || batches == 0 {
		t.Fatalf("flow sync metrics: %v entries sent in %v batches", sent, batches)
	}
	s0 := newScraper(lp.hosts[0])
	if got := s0.value(t, "sluice_flow_sync_entries_total", `direction="received"`, `result="applied"`); got < 500 {
		t.Fatalf("node 0 applied %v synced entries", got)
	}
	if s0.value(t, "sluice_ha_role", `role="master"`) != 1 || s0.value(t, "sluice_ha_transitions_total", `to="master"`) != 2 {
		t.Fatal("node 0's role metrics do not show two takeovers")
	}
	if s0.value(t, "sluice_ha_peer_up", `peer="10.77.0.3"`) != 0 {
		t.Fatal("node 1's link is down, yet node 0 reports it up")
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

// TestLBPairPreempt: with --ha-preempt, the returning higher-priority
// node takes the master role back only after it copied the state and the
// connection table, so connections opened through the other node survive
// although the backend set changed meanwhile (LoxiLB #565).
func TestLBPairPreempt(t *testing.T) {
	lp := newLBPair(t, "100ms", 3, 2, "--ha-preempt")
	if err := lp.hosts[0].SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitRole(t, lp.nodes[1], "master")
	// While node 0 is away: b1 drained, b3 added, then connections that
	// land on b2 and b3, which node 0's old state knows nothing of.
	m := lp.nodes[1]
	m.mustCLI(t, "backend", "drain", vipTCP, lp.lab.Backends[0].Addr.Addr().String())
	m.mustCLI(t, append([]string{"backend", "add", vipTCP, lp.lab.Backends[2].Addr.Addr().String()}, fastCheck...)...)
	m.waitStatus(t, "b3 up", func(st api.Status) bool { return backendState(st, vipTCP, "10.77.0.13").Usable })
	conns := openConns(t, lp.lab, 300)
	t.Logf("connections through node 1: %v", spread(conns))
	back := time.Now()
	if err := lp.hosts[0].SetLinkUp(true); err != nil {
		t.Fatal(err)
	}
	waitRole(t, lp.nodes[0], "master")
	took := time.Since(back)
	var copied, master time.Time
	var copiedWhat string
	for _, e := range lp.nodes[0].events(t) {
		if e.Kind != "ha" || e.Time.Before(back) {
			continue
		}
		if strings.Contains(e.Reason, "copied") && copied.IsZero() {
			copied, copiedWhat = e.Time, e.Reason
		}
		if e.To == "master" && master.IsZero() {
			master = e.Time
		}
	}
	t.Logf("link up -> master again in %v; %q at +%v, master at +%v", took, copiedWhat, copied.Sub(back), master.Sub(back))
	if copied.IsZero() || master.IsZero() || !copied.Before(master) {
		t.Fatal("pre-empted before the flow table was copied")
	}
	if n, per := broken(conns); n != 0 {
		t.Fatalf("%d of %d connections broken by the pre-emption: %v\n%s\nnode 0:\n%s", n, len(conns), per, lp.counters(), lp.nodes[0].mustCLI(t, "status"))
	}
	lp.waitRoles(t, 0)
}

// TestLBPairIPv6: an IPv6 VIP moves with the master (ND answered by the
// owner, unsolicited neighbour advertisements on takeover); its
// connections survive the takeover.
func TestLBPairIPv6(t *testing.T) {
	lp := newLBPair(t, "100ms", 2, 2, "--log-level", "debug")
	const vip6 = "[fd77:1::100]:7/tcp"
	m := lp.nodes[0]
	m.mustCLI(t, "vip", "add", vip6)
	for _, b := range lp.lab.Backends {
		m.mustCLI(t, append([]string{"backend", "add", vip6, b.Addr6.Addr().String()}, fastCheck...)...)
	}
	for _, n := range lp.nodes {
		n.waitStatus(t, "all up", allUp(6))
	}
	dial6 := func() conn {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := lp.lab.Client.Dial(ctx, "tcp6", "", "[fd77:1::100]:7")
		if err != nil {
			t.Fatal(err)
		}
		name, err := netlab.Greeting(c)
		if err != nil {
			t.Fatal(err)
		}
		return conn{c: c, backend: name}
	}
	lp.sameRings(t)
	var cs []conn
	for range 50 {
		cs = append(cs, dial6())
	}
	defer func() {
		for _, c := range cs {
			c.c.Close()
		}
	}()
	if err := lp.hosts[0].SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitRole(t, lp.nodes[1], "master")
	if n, per := broken(cs); n != 0 {
		out, _ := lp.lab.Client.Command(context.Background(), "ip", "-6", "neigh").CombinedOutput()
		st := lp.counters()
		for _, d := range lp.nodes {
			for _, v := range d.status(t).VIPs {
				st += fmt.Sprintf("%s ring %.12s\n", v.VIP, v.RingSHA256)
			}
		}
		n2, per2 := broken(cs)
		t.Fatalf("%d of %d IPv6 connections broken by the takeover: %v\nclient neighbours:\n%s\nnode 1 stats %s\nagain: %d %v", n, len(cs), per, out, st, n2, per2)
	}
	c := dial6()
	c.c.Close()
	out, _ := lp.lab.Client.Command(context.Background(), "ip", "-6", "neigh", "show", "fd77:1::100").CombinedOutput()
	if !strings.Contains(string(out), lp.hosts[1].MAC.String()) {
		t.Fatalf("the client's neighbour entry for the VIP is %q, want node 1's MAC %s", out, lp.hosts[1].MAC)
	}
	t.Logf("after takeover: %d IPv6 connections alive; neighbour %s", len(cs), strings.TrimSpace(string(out)))
}
