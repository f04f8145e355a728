package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestOnErrorMarkDown: with `--on-error mark-down` (interval 100 ms,
// fall 2), a backend whose servers are killed (connections refused) is
// out of the data plane after its first refused check: 20 runs, p99 ≤
// 150 ms from the kill to the map write. A blackholed backend gives
// timeouts, which are not hard: it still takes fall of them (≥ 2 ×
// 100 ms) and its reason names no hard error.
func TestOnErrorMarkDown(t *testing.T) {
	lab, d := newLabDaemon(t, 4, append(slices.Clone(fastCheck), "--on-error", "mark-down")...)
	events := d.follow(t)
	b4, b3 := backendByName(lab, "b4"), backendByName(lab, "b3")
	var kills []time.Duration
	for i := range 20 {
		t0 := time.Now()
		b4.StopServers(false)
		down := events.next(t, b4.Addr.Addr().String(), "down", t0)
		kills = append(kills, down.Marked.Sub(t0))
		if !strings.Contains(down.Reason, "connection refused (a hard error: marked down at once)") {
			t.Fatalf("run %d: down with reason %q, want a refused check marked down at once", i, down.Reason)
		}
		t1 := time.Now()
		if err := b4.StartServers(); err != nil {
			t.Fatal(err)
		}
		events.next(t, b4.Addr.Addr().String(), "up", t1)
	}
	nft := func(args ...string) {
		if out, err := b3.Command(context.Background(), "nft", args...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
	}
	var holes []time.Duration
	for range 5 {
		t0 := time.Now()
		nft("add", "table", "inet", "sluicet")
		nft("add", "chain", "inet", "sluicet", "in", "{ type filter hook input priority 0 ; }")
		nft("add", "rule", "inet", "sluicet", "in", "tcp", "dport", "7", "drop")
		down := events.next(t, b3.Addr.Addr().String(), "down", t0)
		holes = append(holes, down.Marked.Sub(t0))
		if strings.Contains(down.Reason, "hard error") || !strings.Contains(down.Reason, "timeout") {
			t.Fatalf("blackholed: down with reason %q, want timeouts counted towards fall", down.Reason)
		}
		t1 := time.Now()
		nft("delete", "table", "inet", "sluicet")
		events.next(t, b3.Addr.Addr().String(), "up", t1)
	}
	p99 := testutil.Percentile(kills, .99)
	t.Logf("--on-error mark-down: kill → map update over %d runs: p50 %v, p99 %v, max %v (target p99 ≤ 150ms)",
		len(kills), testutil.Percentile(kills, .5), p99, slices.Max(kills))
	t.Logf("blackhole → map update over %d runs: min %v, p50 %v (fall 2 × timeout 100ms = 200ms at least)",
		len(holes), slices.Min(holes), testutil.Percentile(holes, .5))
	if p99 > 150*time.Millisecond {
		t.Errorf("kill p99 %v > 150ms: %v", p99, kills)
	}
	if m := slices.Min(holes); m < 200*time.Millisecond {
		t.Errorf("a blackholed backend went down after %v, before 2 timeouts of 100ms", m)
	}
}
