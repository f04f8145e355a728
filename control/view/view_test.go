package view

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
)

// counting answers every check as up since `since`, and counts the
// questions by check.
type counting struct {
	mu    sync.Mutex
	calls map[health.ID]int
	since time.Time
}

func (c *counting) Status(id health.ID) (health.Status, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[id]++
	return health.Status{State: health.Up, Since: c.since, Decided: true, Changed: true}, true
}

type weights struct{ told map[weight.Key]time.Time }

func (w *weights) Verdict(k weight.Key, up time.Time) weight.Verdict {
	w.told[k] = up
	return weight.Verdict{Percent: 50}
}

type quorum struct{}

func (quorum) Ring(vip, addr string, local health.State) health.State {
	if addr == "10.0.0.2" {
		return health.Down
	}
	return local
}

func testState() state.State {
	s := state.State{VIPs: []state.VIP{
		{VIP: "10.0.0.100:80/tcp", Backends: []state.Backend{{Addr: "10.0.0.1"}, {Addr: "10.0.0.2"}, {Addr: "10.0.0.3", Check: state.Check{Type: "none"}}}},
		// The same backends on another port share nothing; on port 0
		// with the same check port they share their checks.
		{VIP: "10.0.0.100:0/tcp", Backends: []state.Backend{{Addr: "10.0.0.1", Check: state.Check{Port: 80}}, {Addr: "10.0.0.2", Check: state.Check{Port: 80}}}},
	}}
	s.Normalize()
	return s
}

// TestBuildAsksOncePerBackend: a view asks health for each backend's
// verdict exactly once (two backends sharing a check ask twice, once
// each), never for a backend without a check, and tells the weights when
// each came up; the quorum's verdict goes to Ring only.
func TestBuildAsksOncePerBackend(t *testing.T) {
	s := testState()
	h := &counting{calls: map[health.ID]int{}, since: time.Unix(100, 0)}
	w := &weights{told: map[weight.Key]time.Time{}}
	v := Build(s, Sources{Health: h, Weights: w, Ring: quorum{}, Shared: true})
	total := 0
	for id, n := range h.calls {
		total += n
		if n != 2 {
			t.Errorf("check of %v asked %d times, want 2 (two backends share it)", id.Probe.Addr, n)
		}
	}
	if total != 4 || len(h.calls) != 2 {
		t.Errorf("%d questions about %d checks, want 4 about 2 (one a backend with a check)", total, len(h.calls))
	}
	if len(w.told) != 5 || w.told[weight.Key{VIP: "10.0.0.100:80/tcp", Addr: "10.0.0.1"}] != h.since {
		t.Errorf("weights told %v, want all 5 backends with 10.0.0.1 up since %v", w.told, h.since)
	}
	k, _ := state.ParseVIPKey("10.0.0.100:80/tcp")
	for addr, want := range map[string][2]health.State{"10.0.0.1": {health.Up, health.Up}, "10.0.0.2": {health.Up, health.Down}, "10.0.0.3": {health.Up, health.Up}} {
		b := v.Of(k, netip.MustParseAddr(addr))
		if b.Health.State != want[0] || b.Ring != want[1] || !b.Known || b.Weight.Percent != 50 {
			t.Errorf("%s: health %s ring %s known %v percent %d, want %s %s true 50", addr, b.Health.State, b.Ring, b.Known, b.Weight.Percent, want[0], want[1])
		}
	}
	if b := v.Of(k, netip.MustParseAddr("10.0.0.3")); b.Health.Reason != "no health check" {
		t.Errorf("a backend without a check: reason %q", b.Health.Reason)
	}
	if b := v.Of(k, netip.MustParseAddr("10.9.9.9")); b.Health.State != health.Down || b.Ring != health.Down || b.Known {
		t.Errorf("a backend the view lacks: %+v, want down and unknown", b)
	}
}

// TestBuildWithoutSources: nothing known is down and undecided, at full
// weight; the ring verdict is the node's own.
func TestBuildWithoutSources(t *testing.T) {
	v := Build(testState(), Sources{})
	k, _ := state.ParseVIPKey("10.0.0.100:80/tcp")
	b := v.Of(k, netip.MustParseAddr("10.0.0.1"))
	if b.Health.State != health.Down || b.Health.Decided || b.Known || b.Ring != health.Down || b.Weight.Percent != 100 || v.Shared {
		t.Errorf("%+v shared %v", b, v.Shared)
	}
}
