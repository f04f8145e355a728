package weight

import (
	"testing"
	"time"

	"github.com/sluicelb/sluice/health"
)

// engine returns an engine holding vip "v" with the given backends, as
// if each had been synced (no pollers: no agent or load spec).
func engine(t *testing.T, specs ...Spec) *Engine {
	t.Helper()
	e := New(Options{})
	e.Sync(t.Context(), specs)
	return e
}

func spec(addr string) Spec { return Spec{Key: Key{"v", addr}, Active: true} }

func TestTargets(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		name  string
		set   func(e *Engine)
		want  map[string]int
		share map[string]float64 // share of new flows, from the weights
	}{
		{"plain", func(*Engine) {}, map[string]int{"a": 100, "b": 100, "c": 100}, nil},
		{"agent 50%", func(e *Engine) { e.bes[Key{"v", "a"}].report.Weight = 50 }, map[string]int{"a": 50, "b": 100, "c": 100}, nil},
		{"agent drain takes no share", func(e *Engine) { e.bes[Key{"v", "b"}].agent = agentState{why: "agent: drain"} },
			map[string]int{"a": 100, "b": 100, "c": 100}, map[string]float64{"a": .5, "c": .5}},
		{"load 4x target: a quarter of its share", func(e *Engine) {
			b := e.bes[Key{"v", "a"}]
			b.spec.LoadTarget, b.load, b.haveLoad = 1, 4, true
		}, map[string]int{"a": 18, "b": 100, "c": 100}, map[string]float64{"a": 1. / 12}},
		{"load at target: full", func(e *Engine) {
			b := e.bes[Key{"v", "a"}]
			b.spec.LoadTarget, b.load, b.haveLoad = 1, 1, true
		}, map[string]int{"a": 100, "b": 100, "c": 100}, nil},
		{"all loaded alike: unchanged", func(e *Engine) {
			for _, b := range e.bes {
				b.spec.LoadTarget, b.load, b.haveLoad = 2, 8, true
			}
		}, map[string]int{"a": 100, "b": 100, "c": 100}, nil},
		{"slow start half way: 55%", func(e *Engine) {
			b := e.bes[Key{"v", "b"}]
			b.spec.SlowStart, b.activeSince = 10*time.Second, now.Add(-5*time.Second)
		}, map[string]int{"a": 100, "b": 55, "c": 100}, nil},
		{"slow start done", func(e *Engine) {
			b := e.bes[Key{"v", "b"}]
			b.spec.SlowStart, b.activeSince = 10*time.Second, now.Add(-11*time.Second)
		}, map[string]int{"a": 100, "b": 100, "c": 100}, nil},
		{"never below 1", func(e *Engine) {
			b := e.bes[Key{"v", "a"}]
			b.spec.LoadTarget, b.load, b.haveLoad = 1, 1e9, true
		}, map[string]int{"a": 1, "b": 100, "c": 100}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := engine(t, spec("a"), spec("b"), spec("c"))
			c.set(e)
			got := e.targets("v", now)
			total := 0.0
			for addr, want := range c.want {
				if p := got[Key{"v", addr}].pct; p != want {
					t.Errorf("%s: %d%%, want %d%% (%s)", addr, p, want, got[Key{"v", addr}].why)
				}
				if e.bes[Key{"v", addr}].agent.in {
					total += float64(got[Key{"v", addr}].pct)
				}
			}
			for addr, want := range c.share {
				if s := float64(got[Key{"v", addr}].pct) / total; s < want-.005 || s > want+.005 {
					t.Errorf("%s: share %.4f, want %.4f", addr, s, want)
				}
			}
		})
	}
}

func TestReweightBound(t *testing.T) {
	e := engine(t, spec("a"), spec("b"))
	now := time.Now()
	a := e.bes[Key{"v", "a"}]
	if ch, _ := e.reweight(now); len(ch) != 0 {
		t.Fatalf("nothing moved, reweight changed %v", ch)
	}
	a.report.Weight = 97 // 3%: under the threshold
	if ch, _ := e.reweight(now); len(ch) != 0 {
		t.Fatalf("a 3%% move reweighted: %v", ch)
	}
	if v := e.Verdict(Key{"v", "a"}, time.Time{}); v.Percent != 100 {
		t.Fatalf("verdict %d%% before the reweight, want the applied 100%%", v.Percent)
	}
	a.report.Weight = 90
	ch, _ := e.reweight(now)
	if len(ch) != 1 || ch[0].From != 100 || ch[0].To != 90 || ch[0].Reason != "agent: 90%" {
		t.Fatalf("reweight %+v, want a 100%% → 90%% (agent: 90%%)", ch)
	}
	if v := e.Verdict(Key{"v", "a"}, time.Time{}); v.Percent != 90 {
		t.Fatalf("verdict %d%% after the reweight, want 90%%", v.Percent)
	}
}

func TestSlowStartAtOnce(t *testing.T) {
	s := spec("a")
	s.SlowStart = 10 * time.Second
	e := engine(t, s, spec("b"))
	if v := e.Verdict(s.Key, time.Time{}); v.Percent != 100 {
		t.Fatalf("up from the start: %d%%, want 100%% (no ramp for what was up before)", v.Percent)
	}
	v := e.Verdict(s.Key, time.Now())
	if v.Percent != SlowStartFrom || v.Reason == "" {
		t.Fatalf("just recovered: %d%% (%q), want %d%% at once with a reason", v.Percent, v.Reason, SlowStartFrom)
	}
	// Undrained after the first sync: the ramp starts again.
	s.Active = false
	e.Sync(t.Context(), []Spec{s, spec("b")})
	s.Active = true
	e.Sync(t.Context(), []Spec{s, spec("b")})
	if v := e.Verdict(s.Key, time.Time{}); v.Percent != SlowStartFrom {
		t.Fatalf("undrained: %d%%, want %d%%", v.Percent, SlowStartFrom)
	}
	// A backend added after the first sync ramps too.
	c := spec("c")
	c.SlowStart = time.Minute
	e.Sync(t.Context(), []Spec{s, spec("b"), c})
	if v := e.Verdict(c.Key, time.Time{}); v.Percent != SlowStartFrom {
		t.Fatalf("added: %d%%, want %d%%", v.Percent, SlowStartFrom)
	}
}

func TestAgentStates(t *testing.T) {
	e := engine(t, spec("a"))
	b := e.bes[Key{"v", "a"}]
	for _, c := range []struct {
		answer      string
		down, drain bool
		reason      string
	}{
		{"50%", false, false, "agent: 50%"},
		{"drain", false, true, "agent: drain"},
		{"ready", false, false, "agent: 50%"},
		{"down # oom", true, false, "agent: down (oom)"},
		{"up maint", true, false, "agent: maint"},
		{"ready 0%", false, true, "agent: 0% (drain)"},
		{"100%", false, false, ""},
	} {
		rep, err := health.ParseAgentAnswer([]byte(c.answer))
		if err != nil {
			t.Fatal(err)
		}
		b.merge(rep)
		b.note(b.answered())
		e.reweight(time.Now())
		v := e.Verdict(Key{"v", "a"}, time.Time{})
		if v.Down != c.down || v.Drain != c.drain || v.Reason != c.reason {
			t.Errorf("after %q: down %v drain %v reason %q, want %v %v %q", c.answer, v.Down, v.Drain, v.Reason, c.down, c.drain, c.reason)
		}
	}
}

// TestAgentStateBound: an agent state moves a backend only after rise
// (in) or fall (out) answers in a row said it, and only at a reweight,
// so an agent that alternates down and up moves nothing, and one that
// stays down moves it once.
func TestAgentStateBound(t *testing.T) {
	s := spec("a")
	s.Rise, s.Fall = 2, 3
	e := engine(t, s, spec("b"))
	b := e.bes[s.Key]
	answer := func(a string) {
		rep, err := health.ParseAgentAnswer([]byte(a))
		if err != nil {
			t.Fatal(err)
		}
		b.merge(rep)
		b.note(b.answered())
	}
	moves := 0
	tick := func() {
		_, st := e.reweight(time.Now())
		moves += len(st)
	}
	for range 600 { // 60 s of answers every 100 ms, a reweight every 500 ms
		answer("down")
		answer("up")
		answer("down")
		answer("up")
		answer("down")
		tick()
		answer("up")
		answer("down")
		answer("up")
		answer("down")
		answer("up")
		tick()
	}
	if moves != 0 || e.Verdict(s.Key, time.Time{}).Down {
		t.Fatalf("an agent alternating down and up moved the backend %d times", moves)
	}
	answer("down")
	answer("down")
	tick()
	if v := e.Verdict(s.Key, time.Time{}); v.Down || moves != 0 {
		t.Fatalf("out after 2 downs with fall 3: %+v (%d moves)", v, moves)
	}
	answer("down")
	if v := e.Verdict(s.Key, time.Time{}); v.Down {
		t.Fatal("out before the reweight")
	}
	tick()
	if v := e.Verdict(s.Key, time.Time{}); !v.Down || v.Reason != "agent: down" || moves != 1 {
		t.Fatalf("after 3 downs and a reweight: %+v (%d moves), want down", v, moves)
	}
	answer("up")
	tick()
	if v := e.Verdict(s.Key, time.Time{}); !v.Down {
		t.Fatal("back in after 1 up with rise 2")
	}
	answer("up")
	tick()
	if v := e.Verdict(s.Key, time.Time{}); v.Down || v.Drain || moves != 2 {
		t.Fatalf("after 2 ups and a reweight: %+v (%d moves), want in", v, moves)
	}
}
