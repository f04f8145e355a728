package cluster

import (
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
)

// TestQuorumUp: the verdict of each rule over the live nodes' views.
func TestQuorumUp(t *testing.T) {
	view := func(h ...string) []Report {
		var out []Report
		for _, s := range h {
			out = append(out, Report{Health: map[string]map[string]string{"v": {"b": s}}})
		}
		return out
	}
	for _, tc := range []struct {
		q     Quorum
		nodes []Report
		want  bool
	}{
		{Majority, view("up", "up", "down"), true},
		{Majority, view("up", "down", "down"), false},
		{Majority, view("up", "down"), false}, // half is not more than half
		{Majority, view("up", "up", "down", "down"), false},
		{Majority, view("up"), true},
		// Only nodes that decided vote: a node without a view of the
		// backend, or one whose check is still undecided (it just
		// started), is not counted either way.
		{Majority, view("up", "up", ""), true},
		{Majority, view("up", "", ""), true},
		{Majority, view("up", "undecided"), true},
		{Majority, view("up", "undecided", "down"), false},
		{Majority, view("up", "up", "undecided", "down"), true},
		{Majority, view("undecided", "undecided"), false}, // no vote: not up
		{Majority, view("", ""), false},
		{Any, view("undecided", "up"), true},
		{Any, view("undecided"), false},
		{Any, view("down", "down", "up"), true},
		{Any, view("down", "down", "down"), false},
		{Any, nil, false},
	} {
		if got := tc.q.Up(tc.nodes, "v", "b"); got != tc.want {
			t.Errorf("%s over %v: %v, want %v", tc.q, tc.nodes, got, tc.want)
		}
	}
	if _, err := ParseQuorum("most"); err == nil {
		t.Error("quorum rule \"most\" accepted")
	}
}

// TestRingMismatch: only nodes at the same applied revision are compared.
func TestRingMismatch(t *testing.T) {
	r := func(rev uint64, d string) Report {
		return Report{AppliedRevision: rev, RingSHA256: map[string]string{"v": d}}
	}
	if m := RingMismatch([]Report{r(5, "a"), r(5, "a"), r(6, "b")}); m["v"] {
		t.Errorf("nodes at different revisions reported as a mismatch: %v", m)
	}
	if m := RingMismatch([]Report{r(5, "a"), r(5, "b")}); !m["v"] {
		t.Errorf("different rings at one revision not reported: %v", m)
	}
}

// TestReportsUndecided: a node publishes "undecided" for a backend whose
// check has not reached its first verdict (or that its checker does not
// run yet), and "up" or "down" once it has.
func TestReportsUndecided(t *testing.T) {
	k, _ := state.ParseVIPKey("10.0.0.1:80/tcp")
	st := state.State{VIPs: []state.VIP{{VIP: "10.0.0.1:80/tcp", Backends: []state.Backend{
		{Addr: "10.1.0.1"}, {Addr: "10.1.0.2"}, {Addr: "10.1.0.3"}, {Addr: "10.1.0.4"}}}}}
	b := func(known, decided bool, s health.State) view.Backend {
		return view.Backend{Known: known, Health: health.Status{State: s, Decided: decided}}
	}
	v := &view.View{State: st, Backends: map[view.Ref]view.Backend{
		{VIP: k, Addr: netip.MustParseAddr("10.1.0.1")}: b(true, false, health.Down), // a new check
		{VIP: k, Addr: netip.MustParseAddr("10.1.0.2")}: b(true, true, health.Down),
		{VIP: k, Addr: netip.MustParseAddr("10.1.0.3")}: b(true, true, health.Up),
		// 10.1.0.4: not in the view (its check is not running yet)
	}}
	got := localHealth(v)["10.0.0.1:80/tcp"]
	want := map[string]string{"10.1.0.1": VoteUndecided, "10.1.0.2": VoteDown, "10.1.0.3": VoteUp, "10.1.0.4": VoteUndecided}
	for addr, w := range want {
		if got[addr] != w {
			t.Errorf("%s: published %q, want %q", addr, got[addr], w)
		}
	}
}
