package ha

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// bus connects simulated nodes; a cut side's adverts are lost.
type bus struct {
	nodes map[string]*Node
	cut   map[string]bool // adverts from these nodes are dropped
	now   *time.Time
}

type port struct {
	b    *bus
	name string
}

func (p port) Send(data []byte) error {
	if p.b.cut[p.name] {
		return nil
	}
	for name, n := range p.b.nodes {
		if name != p.name && !p.b.cut[name] {
			n.Receive(data, p.name, *p.b.now)
		}
	}
	return nil
}

type pair struct {
	b      *bus
	now    time.Time
	a, c   *Node
	roles  map[string][]Role
	advert time.Duration
}

func newPair(adv time.Duration) *pair {
	p := &pair{advert: adv, roles: map[string][]Role{}}
	p.now = time.Unix(1000, 0)
	p.b = &bus{nodes: map[string]*Node{}, cut: map[string]bool{}, now: &p.now}
	mk := func(name string, prio uint8) *Node {
		n := NewNode(NewFSM(name, prio, adv, false, p.now), key, uint64(p.now.UnixNano()), port{p.b, name}, func() uint64 { return 7 })
		n.OnRole = func(r Role, _ string) { p.roles[name] = append(p.roles[name], r) }
		p.b.nodes[name] = n
		return n
	}
	p.a, p.c = mk("lb-a", 200), mk("lb-b", 100)
	return p
}

// run advances the clock in 1 ms steps.
func (p *pair) run(d time.Duration) {
	for end := p.now.Add(d); p.now.Before(end); p.now = p.now.Add(time.Millisecond) {
		p.a.Tick(p.now)
		p.c.Tick(p.now)
	}
}

func masters(p *pair) int {
	n := 0
	for _, x := range []*Node{p.a, p.c} {
		if x.Status(p.now).Role == Master {
			n++
		}
	}
	return n
}

func TestPairTakeoverAndHandoff(t *testing.T) {
	adv := 100 * time.Millisecond
	p := newPair(adv)
	p.run(time.Second)
	if p.a.Status(p.now).Role != Master || p.c.Status(p.now).Role != Backup {
		t.Fatalf("steady state: a %s, b %s", p.a.Status(p.now).Role, p.c.Status(p.now).Role)
	}
	if m, ok := p.c.Master(p.now); !ok || m.Revision != 7 || m.Node != "lb-a" {
		t.Fatalf("backup sees master %+v (%v)", m, ok)
	}
	for _, x := range []*Node{p.a, p.c} {
		st := x.Status(p.now)
		if len(st.Peers) != 1 || !st.Peers[0].Up {
			t.Fatalf("%s sees peers %+v", st.Node, st.Peers)
		}
	}

	// The master dies: the backup takes over within 3 × advert + its skew
	// of the last advert it heard.
	p.b.cut["lb-a"] = true
	dead := p.now
	for p.c.Status(p.now).Role != Master {
		p.run(time.Millisecond)
		if p.now.Sub(dead) > time.Second {
			t.Fatal("no takeover")
		}
	}
	gap := p.now.Sub(dead)
	if limit := p.c.fsm.MasterDown() + adv; gap > limit {
		t.Fatalf("takeover after %v, want ≤ %v", gap, limit)
	}
	t.Logf("takeover %v after the master fell silent (master-down %v)", gap, p.c.fsm.MasterDown())

	// A heals: two masters until A's next advert; B yields at once.
	p.b.cut["lb-a"] = false
	p.a.fsm.role = Master // it never noticed it was cut off
	p.run(2 * adv)
	if masters(p) != 1 || p.a.Status(p.now).Role != Master {
		t.Fatalf("after healing: %d masters", masters(p))
	}

	// Planned handoff: B takes over at once.
	h := p.now
	if err := p.a.Handoff(p.now); err != nil {
		t.Fatal(err)
	}
	for p.c.Status(p.now).Role != Master {
		p.run(time.Millisecond)
	}
	if d := p.now.Sub(h); d > time.Millisecond {
		t.Fatalf("planned handoff took %v, want the next tick", d)
	}
}

func TestPartitionDualMasterHeals(t *testing.T) {
	adv := 50 * time.Millisecond
	p := newPair(adv)
	p.run(time.Second)
	// Partition: both sides lose each other's adverts for 10 s.
	p.b.cut["lb-a"], p.b.cut["lb-b"] = true, true
	p.run(10 * time.Second)
	if masters(p) != 2 {
		t.Fatalf("partitioned: %d masters, want 2", masters(p))
	}
	p.b.cut["lb-a"], p.b.cut["lb-b"] = false, false
	sawDual := false
	healed := p.now
	for masters(p) != 1 {
		if p.a.Status(p.now).DualMaster || p.c.Status(p.now).DualMaster {
			sawDual = true
		}
		p.run(time.Millisecond)
		if p.now.Sub(healed) > 2*adv {
			t.Fatalf("still %d masters %v after healing", masters(p), p.now.Sub(healed))
		}
	}
	if p.a.Status(p.now).Role != Master {
		t.Fatal("the higher priority should remain the only master")
	}
	if p.a.Status(p.now).DualMaster || p.c.Status(p.now).DualMaster {
		sawDual = true
	}
	if !sawDual {
		t.Fatal("the dual-master condition was never reported")
	}
	// The flag clears once the other side has stopped advertising for a
	// master-down interval.
	p.run(max(p.a.fsm.MasterDown(), p.c.fsm.MasterDown()) + time.Millisecond)
	if p.a.Status(p.now).DualMaster || p.c.Status(p.now).DualMaster || masters(p) != 1 {
		t.Fatal("dual-master flag still set after the partition healed")
	}
}

func TestBadAdvertsAreCounted(t *testing.T) {
	p := newPair(100 * time.Millisecond)
	good, _ := Advert{Priority: 250, Interval: 100 * time.Millisecond, Boot: 1, Seq: 1, Node: "intruder"}.Marshal([]byte("wrong key"))
	p.c.Receive(good, "lb-x", p.now)
	p.c.Receive([]byte("short"), "lb-a", p.now)
	replay, _ := Advert{Priority: 250, Interval: 100 * time.Millisecond, Boot: 1, Seq: 1, Node: "lb-a"}.Marshal(key)
	p.c.Receive(replay, "lb-a", p.now)
	p.c.Receive(replay, "lb-a", p.now)
	st := p.c.Status(p.now)
	if st.BadAdverts["mac"] != 1 || st.BadAdverts["length"] != 1 || st.BadAdverts["replay"] != 1 {
		t.Fatalf("bad adverts %v", st.BadAdverts)
	}
}

// addrPort delivers adverts between nodes by address.
type addrPort struct {
	nodes map[string]*Node
	self  string
	now   *time.Time
	cut   *bool // while true, adverts are lost (a partition)
}

func (p addrPort) Send(data []byte) error {
	if p.cut != nil && *p.cut {
		return nil
	}
	for addr, n := range p.nodes {
		if addr != p.self {
			n.Receive(data, p.self, *p.now)
		}
	}
	return nil
}

// TestSameNameNeverTwoMasters: two nodes started with the same name (and
// priority) do not ignore each other's adverts as their own: each counts
// them under own-name, and when both are master (they started apart, as
// after a partition) their addresses break the tie, so exactly one stays
// master.
func TestSameNameNeverTwoMasters(t *testing.T) {
	adv := 100 * time.Millisecond
	now := time.Unix(1000, 0)
	nodes := map[string]*Node{}
	cut := true
	for _, addr := range []string{"10.0.0.2", "10.0.0.3"} {
		n := NewNode(NewFSM("lb", 100, adv, false, now), key, uint64(now.UnixNano()), addrPort{nodes, addr, &now, &cut}, nil)
		n.Self = addr
		nodes[addr] = n
	}
	for end := now.Add(time.Second); now.Before(end); now = now.Add(time.Millisecond) {
		for _, n := range nodes {
			n.Tick(now)
		}
	}
	for addr, n := range nodes {
		if r := n.Role(); r != Master {
			t.Fatalf("%s is %s while cut off, want master", addr, r)
		}
	}
	cut = false
	for end := now.Add(2 * time.Second); now.Before(end); now = now.Add(time.Millisecond) {
		for _, n := range nodes {
			n.Tick(now)
		}
	}
	masters := 0
	for addr, n := range nodes {
		st := n.Status(now)
		if st.Role == Master {
			masters++
		}
		if st.BadAdverts["own-name"] == 0 {
			t.Errorf("%s counted no adverts carrying its own name", addr)
		}
	}
	if masters != 1 {
		t.Fatalf("%d masters, want exactly one", masters)
	}
	if nodes["10.0.0.3"].Status(now).Role != Master {
		t.Fatalf("the higher address should win the tie")
	}
}

// gatedPort holds the priority-0 advert inside Send until released and
// records the sequence numbers in the order the adverts left.
type gatedPort struct {
	t       *testing.T
	release chan struct{}
	mu      sync.Mutex
	wire    []Advert
}

func (g *gatedPort) Send(b []byte) error {
	a, err := Parse(b, key)
	if err != nil {
		g.t.Error(err)
	}
	if a.Priority == 0 {
		<-g.release
	}
	g.mu.Lock()
	g.wire = append(g.wire, a)
	g.mu.Unlock()
	return nil
}

// TestHandoffAdvertLeavesFirst: an advert due while the priority-0
// handoff is still being sent waits for it, so the peer never sees the
// handoff after a later sequence number (and refuses it as a replay).
// Before, the master kept its role until the next master-down.
func TestHandoffAdvertLeavesFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := &gatedPort{t: t, release: make(chan struct{})}
		now := time.Now()
		n := NewNode(NewFSM("lb-a", 200, 100*time.Millisecond, false, now), key, 1, g, nil)
		peer := NewNode(NewFSM("lb-b", 100, 100*time.Millisecond, false, now), key, 1, port{b: &bus{nodes: map[string]*Node{}, cut: map[string]bool{}, now: &now}, name: "lb-b"}, nil)
		var wg sync.WaitGroup
		wg.Go(func() { _ = n.Handoff(now) })
		synctest.Wait() // the handoff is inside Send
		wg.Go(func() { _ = n.Tick(now) })
		synctest.Wait() // the due advert waits for it, or (the bug) went out
		close(g.release)
		wg.Wait()
		if len(g.wire) != 2 {
			t.Fatalf("sent %d adverts, want 2", len(g.wire))
		}
		for i, a := range g.wire {
			peer.Receive(mustMarshal(t, a), "lb-a", now)
			if i > 0 && a.Seq <= g.wire[i-1].Seq {
				t.Errorf("advert seq %d left after seq %d", a.Seq, g.wire[i-1].Seq)
			}
		}
		if bad := peer.Status(now).BadAdverts; len(bad) != 0 {
			t.Errorf("peer refused adverts: %v", bad)
		}
		if err := peer.Tick(now); err != nil {
			t.Fatal(err)
		}
		if r := peer.Role(); r != Master {
			t.Errorf("peer is %s after the handoff, want master at once", r)
		}
	})
}

// TestNewMasterAdvertisesAtOnce: the tick that makes a backup master sends
// its first master advert, even though its backup advert went out less
// than an interval before.
func TestNewMasterAdvertisesAtOnce(t *testing.T) {
	adv := 100 * time.Millisecond
	p := newPair(adv)
	p.b.cut["lb-a"] = true // lb-b hears no master and takes over
	rec := &gatedPort{t: t, release: make(chan struct{})}
	p.c.send = rec
	for p.c.Status(p.now).Role != Master {
		p.now = p.now.Add(time.Millisecond)
		p.c.Tick(p.now)
	}
	got := rec.wire
	last := got[len(got)-1]
	if !last.Master {
		t.Fatalf("the tick that made lb-b master sent no master advert; last sent %+v", last)
	}
	if len(got) < 2 || got[len(got)-2].Master {
		t.Fatalf("want backup adverts before the first master advert: %+v", got)
	}
}

func mustMarshal(t *testing.T, a Advert) []byte {
	t.Helper()
	b, err := a.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
