package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterStoreUpNeedsQuorum: with 2 of 3 etcd members stopped, the
// last one still answers reads of its own, but nothing can commit.
// sluice_store_up reads 0 within 3 s on every node (before, the health
// read was one the cut-off member answers, so it stayed 1), a change is
// refused saying that etcd has no quorum, and once the members are back
// the metric reads 1 and a change lands.
func TestClusterStoreUpNeedsQuorum(t *testing.T) {
	lc := newLabCluster(t, 2, 2)
	a := lc.nodes[0]
	var scrapers []*scraper
	for _, h := range lc.lab.Nodes {
		scrapers = append(scrapers, newScraper(h))
	}
	for i, s := range scrapers {
		if v := s.value(t, "sluice_store_up"); v != 1 {
			t.Fatalf("node %d: sluice_store_up %g before the fault", i, v)
		}
	}
	for _, m := range lc.etcd.Members[1:] {
		if err := m.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	lost := time.Now()
	for i, s := range scrapers {
		for s.value(t, "sluice_store_up") != 0 {
			if time.Since(lost) > 3*time.Second {
				t.Fatalf("node %d: sluice_store_up still 1 %v after etcd lost its quorum", i, time.Since(lost))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("node %d: sluice_store_up 0 %v after 2 of 3 members stopped", i, time.Since(lost).Round(10*time.Millisecond))
	}
	out, err := a.cli(t, "vip", "add", vipHTTP, "--forward", "ipip")
	if err == nil || !strings.Contains(out, "store unreachable since") || !strings.Contains(out, "without a quorum") {
		t.Fatalf("a change without a quorum: %v\n%s", err, out)
	}
	t.Logf("refused: %s", strings.TrimSpace(out))
	for _, m := range lc.etcd.Members[1:] {
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	back := time.Now()
	for i, s := range scrapers {
		for s.value(t, "sluice_store_up") != 1 {
			if time.Since(back) > 30*time.Second {
				t.Fatalf("node %d: sluice_store_up still 0 30 s after the members came back", i)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	a.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip")
	lc.waitSameRings(t, 10*time.Second)
}
