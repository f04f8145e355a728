package cluster

import "testing"

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
		{Majority, view("up", "up", ""), true}, // a node without a view counts against
		{Majority, view("up", "", ""), false},
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
