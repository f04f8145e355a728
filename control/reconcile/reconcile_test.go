package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/maglev"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/memdp"
)

const (
	testVIP  = "10.0.0.100:80/tcp"
	testRing = 4099
	testSeed = 0x5eed
)

// be is one backend of a case: its configuration and the verdicts the
// view holds for it.
type be struct {
	addr     string
	weight   uint32 // 0: 1
	zero     bool   // weight 0 (drained by weight)
	drain    bool
	disabled bool
	standby  bool
	noMAC    bool         // no configured MAC: the resolver fails
	down     bool         // this node's health check says down
	ring     health.State // the cluster's ring verdict ("": this node's)
	percent  int          // weight verdict (0: 100)
	agent    string       // "drain" or "down" from its agent
}

// want is a backend's expected entry: usable and draining flags, and in
// the ring with this weight (0: out of it).
type want struct {
	usable, draining bool
	ringWeight       uint32
}

type rcase struct {
	name     string
	policy   string
	primary  string
	minAct   int
	shared   bool
	bes      []be
	want     map[string]want
	keepRing bool // the ring from before the case's apply stays
}

func (c rcase) vip() state.VIP {
	v := state.VIP{VIP: testVIP, RingSize: testRing, MinActive: max(1, c.minAct), Policy: c.policy, Primary: c.primary}
	for _, b := range c.bes {
		sb := state.Backend{Addr: b.addr, Weight: max(1, b.weight), Drain: b.drain, Disabled: b.disabled, Standby: b.standby,
			MAC: "02:00:00:00:00:01", Check: state.Check{Type: "tcp"}}
		if b.zero {
			sb.Weight = 0
		}
		if b.noMAC {
			sb.MAC = ""
		}
		v.Backends = append(v.Backends, sb)
	}
	return v
}

// view is the case's view, built from data: every verdict is the case's.
func (c rcase) view() *view.View {
	s := state.State{Revision: 1, VIPs: []state.VIP{c.vip()}}
	s.Normalize()
	k, _ := state.ParseVIPKey(testVIP)
	v := &view.View{State: s, Backends: map[view.Ref]view.Backend{}, Shared: c.shared, Built: time.Now()}
	for _, b := range c.bes {
		h := health.Up
		if b.down {
			h = health.Down
		}
		r := b.ring
		if r == "" {
			r = h
		}
		w := weight.Verdict{Percent: max(1, b.percent)}
		if b.percent == 0 {
			w.Percent = 100
		}
		w.Drain, w.Down = b.agent == "drain", b.agent == "down"
		v.Backends[view.Ref{VIP: k, Addr: netip.MustParseAddr(b.addr)}] = view.Backend{
			Health: health.Status{State: h, Decided: true}, Known: true, Ring: r, Weight: w}
	}
	return v
}

var three = []be{{addr: "10.0.0.1"}, {addr: "10.0.0.2"}, {addr: "10.0.0.3"}}

func with(bes []be, i int, edit func(*be)) []be {
	out := slices.Clone(bes)
	edit(&out[i])
	return out
}

func in(w uint32) want { return want{usable: true, ringWeight: w} }

var (
	out      = want{}
	draining = want{usable: true, draining: true}
)

func reconcileCases() []rcase {
	return []rcase{
		{name: "all up", bes: three, want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": in(100)}},
		{name: "down", bes: with(three, 1, func(b *be) { b.down = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": out, "10.0.0.3": in(100)}},
		{name: "drained", bes: with(three, 1, func(b *be) { b.drain = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": draining, "10.0.0.3": in(100)}},
		{name: "weight 0 drains", bes: with(three, 1, func(b *be) { b.zero = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": draining, "10.0.0.3": in(100)}},
		{name: "disabled", bes: with(three, 1, func(b *be) { b.disabled = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": out, "10.0.0.3": in(100)}},
		{name: "disabled and drained", bes: with(three, 1, func(b *be) { b.disabled, b.drain = true, true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": {draining: true}, "10.0.0.3": in(100)}},
		{name: "weights", bes: with(three, 0, func(b *be) { b.weight = 3 }),
			want: map[string]want{"10.0.0.1": in(300), "10.0.0.2": in(100), "10.0.0.3": in(100)}},
		{name: "slow start or agent weight", bes: with(three, 2, func(b *be) { b.percent = 10 }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": in(10)}},
		{name: "agent drain", bes: with(three, 2, func(b *be) { b.agent = "drain" }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": draining}},
		{name: "agent down", bes: with(three, 2, func(b *be) { b.agent = "down" }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": out}},
		{name: "standby stays out while the actives suffice", minAct: 2,
			bes:  with(three, 2, func(b *be) { b.standby = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": {usable: true}}},
		{name: "standby joins below min_active", minAct: 2,
			bes:  with(with(three, 2, func(b *be) { b.standby = true }), 0, func(b *be) { b.down = true }),
			want: map[string]want{"10.0.0.1": out, "10.0.0.2": in(100), "10.0.0.3": in(100)}},
		{name: "no usable backend: an empty ring",
			bes:  []be{{addr: "10.0.0.1", down: true}, {addr: "10.0.0.2", disabled: true}},
			want: map[string]want{"10.0.0.1": out, "10.0.0.2": out}},
		{name: "failover: only the primary", policy: state.PolicyFailover, primary: "10.0.0.2", bes: with(three, 1, func(b *be) { b.weight = 5 }),
			want: map[string]want{"10.0.0.1": out, "10.0.0.2": in(1), "10.0.0.3": out}},
		{name: "failover: a primary down keeps its ring, unusable", policy: state.PolicyFailover, primary: "10.0.0.2",
			bes: with(three, 1, func(b *be) { b.down = true }), keepRing: true,
			want: map[string]want{"10.0.0.1": out, "10.0.0.2": out, "10.0.0.3": out}},
		{name: "failover: a drained primary is not draining", policy: state.PolicyFailover, primary: "10.0.0.1",
			bes: with(three, 0, func(b *be) { b.drain = true }), want: map[string]want{"10.0.0.1": in(1), "10.0.0.2": out, "10.0.0.3": out}},
		{name: "cluster: the quorum's down takes it out of the ring here too", shared: true,
			bes:  with(three, 1, func(b *be) { b.ring = health.Down }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": out, "10.0.0.3": in(100)}},
		{name: "cluster: up by the quorum, down here: in the ring, not used here", shared: true,
			bes:  with(three, 1, func(b *be) { b.down, b.ring = true, health.Up }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": {ringWeight: 100}, "10.0.0.3": in(100)}},
		{name: "cluster: no MAC here keeps the shared ring", shared: true,
			bes:  with(three, 2, func(b *be) { b.noMAC = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": {ringWeight: 100}}},
		{name: "alone: no MAC takes it out of the ring", bes: with(three, 2, func(b *be) { b.noMAC = true }),
			want: map[string]want{"10.0.0.1": in(100), "10.0.0.2": in(100), "10.0.0.3": out}},
	}
}

// noMACs is a resolver that never finds one.
type noMACs struct{}

func (noMACs) Resolve(context.Context, netip.Addr) (net.HardwareAddr, error) {
	return nil, errors.New("no neighbour")
}

func newRec(t *testing.T, m *memdp.Maps) *Reconciler {
	t.Helper()
	r, err := New(m, noMACs{}, testSeed, func() {})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestApplyDecides: each case's view, applied to empty maps (and, for
// keepRing, over the ring of every backend up), writes exactly the
// expected backend flags and the ring Maglev builds from the expected
// members; a second apply of the same view writes nothing.
func TestApplyDecides(t *testing.T) {
	for _, c := range reconcileCases() {
		t.Run(c.name, func(t *testing.T) {
			m := &memdp.Maps{}
			r := newRec(t, m)
			k, _ := state.ParseVIPKey(testVIP)
			if c.keepRing {
				up := c
				up.bes = three
				if _, err := r.Apply(context.Background(), up.view()); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := m.Ring(DataKey(k))
			if _, err := r.Apply(context.Background(), c.view()); err != nil && !c.hasNoMAC() {
				t.Fatal(err)
			}
			checkEntries(t, m, r, k, c)
			checkRing(t, m, k, c, before)
			if res, err := r.Apply(context.Background(), c.view()); (err != nil && !c.hasNoMAC()) || res.Writes != 0 {
				t.Errorf("the same view again: %d writes (%v), want 0", res.Writes, err)
			}
		})
	}
}

func (c rcase) hasNoMAC() bool {
	return slices.ContainsFunc(c.bes, func(b be) bool { return b.noMAC })
}

func checkEntries(t *testing.T, m *memdp.Maps, r *Reconciler, k state.VIPKey, c rcase) {
	t.Helper()
	_, id, _ := r.View(k)
	for addr, w := range c.want {
		e, ok := m.Backend(id, netip.MustParseAddr(addr))
		if !ok {
			t.Errorf("%s: no backend entry", addr)
			continue
		}
		usable, draining := e.Flags&loader.BackendUsable != 0, e.Flags&loader.BackendDraining != 0
		if usable != w.usable || draining != w.draining {
			t.Errorf("%s: usable %v draining %v, want %v %v", addr, usable, draining, w.usable, w.draining)
		}
	}
}

func checkRing(t *testing.T, m *memdp.Maps, k state.VIPKey, c rcase, before []uint32) {
	t.Helper()
	got, _ := m.Ring(DataKey(k))
	if c.keepRing {
		if !slices.Equal(got, before) {
			t.Errorf("the ring changed; want it kept")
		}
		return
	}
	idx := map[string]uint32{}
	bes, _ := m.Backends()
	for i, b := range bes {
		idx[b.Addr.String()] = i
	}
	var members []maglev.Backend
	for addr, w := range c.want {
		if w.ringWeight > 0 {
			members = append(members, maglev.Backend{ID: addr, Weight: w.ringWeight, Slot: idx[addr]})
		}
	}
	wantRing, err := maglev.Build(members, testRing, testSeed)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, wantRing) {
		t.Errorf("ring: %s, want %s", share(m, k), describe(members))
	}
}

func share(m *memdp.Maps, k state.VIPKey) string {
	var parts []string
	for a, n := range m.Slots(DataKey(k)) {
		parts = append(parts, fmt.Sprintf("%v:%d", a, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func describe(ms []maglev.Backend) string {
	var parts []string
	for _, b := range ms {
		parts = append(parts, fmt.Sprintf("%s×%d", b.ID, b.Weight))
	}
	slices.Sort(parts)
	return "members " + strings.Join(parts, " ")
}

// TestOut: the fast path clears a usable flag at once; an apply of a
// view built before it (older than the verdict) keeps it cleared, and one
// built after it, with the backend up again, sets it again.
func TestOut(t *testing.T) {
	m := &memdp.Maps{}
	r := newRec(t, m)
	c := rcase{bes: three}
	old := c.view()
	if _, err := r.Apply(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	k, _ := state.ParseVIPKey(testVIP)
	ref := BackendRef{VIP: k, Addr: netip.MustParseAddr("10.0.0.2")}
	at, err := r.Out([]BackendRef{ref})
	if err != nil || at.IsZero() {
		t.Fatalf("Out: %v at %v", err, at)
	}
	_, id, _ := r.View(k)
	usable := func() bool { e, _ := m.Backend(id, ref.Addr); return e.Flags&loader.BackendUsable != 0 }
	if usable() {
		t.Fatal("Out left the flag set")
	}
	if again, _ := r.Out([]BackendRef{ref}); !again.IsZero() {
		t.Error("Out of a backend already out wrote again")
	}
	if _, err := r.Apply(context.Background(), old); err != nil || usable() {
		t.Fatalf("an apply of a view older than Out made it usable again (%v)", err)
	}
	if _, err := r.Apply(context.Background(), c.view()); err != nil || !usable() {
		t.Fatalf("an apply of a newer view with it up left it out (%v)", err)
	}
}

// TestPrune: a VIP gone from the state is deleted with its ring, a
// backend gone has its entry cleared; what stays is not written.
func TestPrune(t *testing.T) {
	m := &memdp.Maps{}
	r := newRec(t, m)
	c := rcase{bes: three}
	v := c.view()
	other := state.VIP{VIP: "10.0.0.101:53/udp", RingSize: testRing, Backends: []state.Backend{{Addr: "10.0.0.9", MAC: "02:00:00:00:00:09", Check: state.Check{Type: "none"}}}}
	v.State.VIPs = append(v.State.VIPs, other)
	v.State.Normalize()
	if _, err := r.Apply(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	c.bes = three[:2]
	res, err := r.Apply(context.Background(), c.view())
	if err != nil {
		t.Fatal(err)
	}
	vips, _ := m.VIPs()
	bes, _ := m.Backends()
	if len(vips) != 1 || len(bes) != 2 {
		t.Fatalf("after pruning: %d VIPs, %d backends; want 1 and 2", len(vips), len(bes))
	}
	// The VIP, two cleared entries and the ring rebuilt without 10.0.0.3.
	if res.Writes != 4 {
		t.Errorf("%d writes, want 4 (a VIP deleted, two entries cleared, one ring)", res.Writes)
	}
}

// TestRestartAdopts: a new reconciler over maps a previous one wrote
// keeps every VIP id and backend index and writes nothing for the same
// view.
func TestRestartAdopts(t *testing.T) {
	m := &memdp.Maps{}
	c := rcase{bes: three}
	if _, err := newRec(t, m).Apply(context.Background(), c.view()); err != nil {
		t.Fatal(err)
	}
	res, err := newRec(t, m).Apply(context.Background(), c.view())
	if err != nil || res.Writes != 0 {
		t.Fatalf("restarted: %d writes (%v), want 0", res.Writes, err)
	}
}

// TestRingRebuildsOnlyWhenMembersChange: a change that moves no ring
// member (a drain flag on a standby outside the ring) swaps no ring; one
// that does swaps exactly one.
func TestRingRebuildsOnlyWhenMembersChange(t *testing.T) {
	m := &memdp.Maps{}
	r := newRec(t, m)
	k, _ := state.ParseVIPKey(testVIP)
	c := rcase{minAct: 1, bes: with(three, 2, func(b *be) { b.standby = true })}
	for i, step := range []struct {
		edit     func(*be)
		who      int
		rebuilds uint64
	}{
		{func(*be) {}, 0, 1},
		{func(b *be) { b.drain = true }, 2, 1},
		{func(b *be) { b.down = true }, 0, 2},
	} {
		c.bes = with(c.bes, step.who, step.edit)
		if _, err := r.Apply(context.Background(), c.view()); err != nil {
			t.Fatal(err)
		}
		if got := r.Rebuilds()[k]; got != step.rebuilds {
			t.Errorf("step %d: %d ring swaps, want %d", i, got, step.rebuilds)
		}
	}
}
