package control

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
)

// TestChecksDecideBeforeAnnouncing: a node holds its routes back until
// every check it started with has reached a first verdict (a check
// adopted from the data plane has one at once), then never again, not
// even for a check added later; and past the checks' bound it stops
// waiting.
func TestChecksDecideBeforeAnnouncing(t *testing.T) {
	vip, _ := state.ParseVIPKey("127.0.0.1:80/tcp")
	settings := health.Settings{Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 2, Fall: 2}
	check := func(port uint16) health.Check {
		return health.Check{Probe: health.Probe{Type: health.TCP, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}, Settings: settings}
	}
	results := make(chan health.Result, 64)
	hm := &health.Manager{OnResult: func(r health.Result) { results <- r }}
	t.Cleanup(hm.Stop)
	c := &checks{hm: hm, log: slog.Default(), started: time.Now()}
	adopted, fresh := check(uint16(freePort(t))), check(uint16(freePort(t)))
	set := func(cs ...health.Check) {
		refs := map[health.ID][]reconcile.BackendRef{}
		for _, hc := range cs {
			refs[hc.ID()] = []reconcile.BackendRef{{VIP: vip, Addr: hc.Probe.Addr.Addr()}}
		}
		c.refs.Store(&refs)
		c.decideBound.Store(int64(time.Hour))
	}
	set(adopted, fresh)
	hm.Sync(context.Background(), []health.Check{adopted, fresh}, map[health.ID]health.State{adopted.ID(): health.Up})
	if c.allDecided(time.Now()) {
		t.Fatal("decided before the new check's first probe")
	}
	// The fresh check probes a closed port: down after fall (2) probes.
	for n := 0; n < settings.Fall; {
		if r := <-results; r.Check == fresh.ID() {
			n++
		}
	}
	if !c.allDecided(time.Now()) {
		st, _ := hm.Status(fresh.ID())
		t.Fatalf("not decided after %d failures of the new check (%+v)", settings.Fall, st)
	}
	later := check(uint16(freePort(t)))
	set(adopted, fresh, later)
	hm.Sync(context.Background(), []health.Check{adopted, fresh, later}, nil)
	if !c.allDecided(time.Now()) {
		t.Fatal("a check added after the first verdicts held the node back")
	}

	// Past the bound, a check that has not decided does not hold it.
	c2 := &checks{hm: hm, log: slog.Default(), started: time.Now()}
	never := check(1) // no probe runs: its check is not synced
	refs := map[health.ID][]reconcile.BackendRef{never.ID(): {{VIP: vip, Addr: never.Probe.Addr.Addr()}}}
	c2.refs.Store(&refs)
	c2.decideBound.Store(int64(time.Second))
	if c2.allDecided(c2.started.Add(999 * time.Millisecond)) {
		t.Fatal("decided within the bound with a check undecided")
	}
	if !c2.allDecided(c2.started.Add(time.Second)) {
		t.Fatal("still waiting past the bound")
	}
}

// TestFirstVerdictBound: up to one interval before the first probe, then
// rise or fall probes, each up to an interval plus the timeout.
func TestFirstVerdictBound(t *testing.T) {
	s := health.Settings{Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 3, Fall: 2}
	if got, want := firstVerdictBound(s), 6*time.Second; got != want {
		t.Errorf("bound %v, want %v", got, want)
	}
}
