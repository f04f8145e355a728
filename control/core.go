package control

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/availability"
	"github.com/sluicelb/sluice/control/events"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
)

// core is the desired state and the one path that applies it: a change
// commits through the topology, a replicated state is accepted by the
// topology's rules, and every apply builds one view of the verdicts and
// hands it to the reconciler, which decides from it alone.
type core struct {
	log     *slog.Logger
	store   *state.BoltStore
	dp      Datapath
	rec     *reconcile.Reconciler
	health  view.Health
	weights view.Weights
	events  *events.Log
	topo    topology
	checks  *checks
	// kick is told of every apply (the route announcer), changed of
	// every change, with the view it was applied under (promotions look
	// again).
	kick    func()
	changed func(*view.View)
	iface   string
	started time.Time
	ctx     context.Context

	// wmu serialises what writes the committed state: a change, whose
	// commit where the state lives is network or disk I/O (etcd, the
	// bbolt file), and a replica, which is stored on disk first. It is
	// never taken by the data path, health verdicts, the route announcer
	// or the watchdog.
	wmu sync.Mutex
	// mu guards the committed state and serialises applies (map writes
	// only: it is never held across network or disk I/O).
	mu    sync.Mutex
	state state.State
	// have is the shared store's revision state came from (a cluster's
	// etcd; the local revision otherwise), readable without mu.
	have         atomic.Uint64
	availability map[availability.Subject]bool // last recorded availability
	lastApplied  time.Time                     // when the last change reached the maps
	lastCommit   time.Time                     // when the last change was committed

	// unkept is the committed state the bbolt file could not keep (a
	// full disk), to keep once it can; nil when the file is current.
	unkept  atomic.Pointer[state.State]
	rev     atomic.Uint64               // state.Revision, readable without mu
	current atomic.Pointer[state.State] // the committed state, readable without mu
	applied atomic.Pointer[view.View]   // the view the last apply decided from
}

// State returns the committed desired state, without waiting for an
// apply.
func (c *core) State() state.State {
	if p := c.current.Load(); p != nil {
		return p.Clone()
	}
	return state.State{}
}

// Revision is the committed revision, without waiting for a change.
func (c *core) Revision() uint64 { return c.rev.Load() }

// Look is a view of the committed state under the verdicts of now.
func (c *core) Look() *view.View {
	c.mu.Lock()
	s, src := c.state.Clone(), c.sources()
	c.mu.Unlock()
	return view.Build(s, src)
}

// look is a view of s (under mu).
func (c *core) look(s state.State) *view.View { return view.Build(s, c.sources()) }

// sources are what views read: the checker, the weights and the
// topology's ring rule of now (under mu).
func (c *core) sources() view.Sources {
	return view.Sources{Health: c.health, Weights: c.weights, Ring: c.topo.RingRule(), Shared: c.topo.Shared()}
}

// Timing is when the last change was committed and reached the maps.
func (c *core) Timing() (committed, applied time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastCommit, c.lastApplied
}

// Change commits a change and applies it.
func (c *core) Change(ctx context.Context, what string, change func(*state.State) error) (state.State, error) {
	return c.commit(ctx, what, false, change)
}

// Fenced is Change for what only the coordinator records (a promotion):
// in a cluster its transaction also requires this node's election.
func (c *core) Fenced(ctx context.Context, what string, change func(*state.State) error) (state.State, error) {
	return c.commit(ctx, what, true, change)
}

func (c *core) commit(ctx context.Context, what string, fenced bool, change func(*state.State) error) (state.State, error) {
	if err := c.topo.MayChange(); err != nil {
		return state.State{}, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	st, err := c.topo.Commit(ctx, fenced, change) // network and disk I/O: mu is not held
	if err != nil {
		return state.State{}, err
	}
	c.mu.Lock()
	err = c.takeCommitted(ctx, what, st)
	c.mu.Unlock()
	if err != nil {
		return st, err
	}
	go c.changed(c.applied.Load())
	return st, nil
}

// takeCommitted makes st, just committed, the state and applies it if
// its revision moved (under mu). No replica got here meanwhile: both hold
// wmu.
func (c *core) takeCommitted(ctx context.Context, what string, st state.State) error {
	c.lastCommit = time.Now()
	prev := c.state.Revision
	c.setState(st, st.Revision)
	if st.Revision == prev {
		return nil
	}
	c.topo.Committed()
	if _, err := c.takeLocked(ctx); err != nil {
		return fmt.Errorf("revision %d committed, but applying it failed: %w", st.Revision, err)
	}
	c.events.Add(api.Event{Kind: "config", Reason: what, Revision: st.Revision})
	return nil
}

// setState makes st the committed state, from the shared store's
// revision have (under mu).
func (c *core) setState(st state.State, have uint64) {
	c.state = st
	c.have.Store(have)
	c.rev.Store(st.Revision)
	snap := st.Clone()
	c.current.Store(&snap)
}

// takeLocked syncs the checks with a new committed state and applies it.
func (c *core) takeLocked(ctx context.Context) (reconcile.Result, error) {
	c.checks.sync(ctx, c.state)
	res, err := c.applyLocked(ctx)
	if err == nil {
		c.lastApplied = res.Done
	}
	return res, err
}

// ApplyReplica stores and applies a state a peer committed (the pair's
// master, the cluster's etcd), if the topology's rules accept it. It is
// stored on disk before mu is taken.
func (c *core) ApplyReplica(next state.State) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	cur := c.current.Load()
	if cur != nil && next.Revision == cur.Revision && state.Equal(next, *cur) {
		return nil
	}
	if !c.topo.Accept(next, c.have.Load()) {
		return nil // this node's own commit, or a newer state, got here first
	}
	next = next.Clone()
	next.Normalize()
	if err := next.Validate(); err != nil {
		return fmt.Errorf("replicated revision %d: %w", next.Revision, err)
	}
	st, err := c.KeepLocal(next) // disk I/O: mu is not held
	if err != nil {
		st = next // valid, so applied all the same: the file is kept later
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.state.Revision
	c.setState(st, st.Revision)
	c.lastCommit = time.Now()
	if _, err := c.takeLocked(c.ctx); err != nil {
		return fmt.Errorf("revision %d replicated, but applying it failed: %w", st.Revision, err)
	}
	c.events.Add(api.Event{Kind: "config", Reason: fmt.Sprintf("replicated from the master (revision %d, was %d)", st.Revision, prev), Revision: st.Revision})
	return nil
}

// Reapply applies the committed state again, for what changed (logged if
// it fails).
func (c *core) Reapply(what string) { c.reapply(what) }

func (c *core) reapply(what string) reconcile.Result {
	c.mu.Lock()
	res, err := c.applyLocked(c.ctx)
	c.mu.Unlock()
	if err != nil {
		c.log.Error("apply "+what, "err", err)
	}
	return res
}

// verdict applies a health verdict at once: a backend going down is taken
// out first, without waiting for an apply in progress (and its ring
// swap); then the state is applied under the new verdict. It returns when
// the data plane stopped using the backend and when the apply finished.
func (c *core) verdict(e health.Event) (marked, applied time.Time, err error) {
	var out time.Time
	if e.To == health.Down {
		out, _ = c.rec.Out(c.checks.of(e.Check))
	}
	c.mu.Lock()
	res, err := c.applyLocked(c.ctx)
	c.mu.Unlock()
	applied, marked = res.Done, res.FirstWrite
	if !out.IsZero() {
		marked = out
	}
	if marked.IsZero() {
		marked = applied
	}
	return marked, applied, err
}

// applyLocked makes the data plane match the committed state under one
// view of the verdicts of now, tells the topology and the routes, and
// records availability. Every apply goes through here; mu is held.
func (c *core) applyLocked(ctx context.Context) (reconcile.Result, error) {
	v := c.look(c.state)
	res, err := c.rec.Apply(ctx, v)
	c.applied.Store(v)
	c.topo.Applied(v)
	c.kick()
	if err != nil {
		return res, err
	}
	c.recordAvailabilityLocked()
	return res, nil
}

// UsableView lists "VIP backend" for every backend the data plane may
// use, sorted (an LB pair's backup pre-empts only with its master's).
func (c *core) UsableView() []string {
	var out []string
	for _, v := range c.State().VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		view, _, _ := c.rec.View(k)
		for a, bv := range view {
			if bv.Usable {
				out = append(out, v.VIP+" "+a.String())
			}
		}
	}
	slices.Sort(out)
	return out
}

// FlowBackend is the local index of backend addr of the VIP a client
// flow to dst belongs to (flow sync's entries carry addresses).
func (c *core) FlowBackend(dst netip.AddrPort, proto loader.Proto, addr netip.Addr) (uint32, bool) {
	return c.rec.FlowBackend(dst, proto, addr)
}

// BackendAddrs maps every backend index in use to its address.
func (c *core) BackendAddrs() map[uint32]netip.Addr {
	refs := c.rec.BackendRefs()
	out := make(map[uint32]netip.Addr, len(refs))
	for idx, ref := range refs {
		out[idx] = ref.Addr
	}
	return out
}

// setKick makes kick what every apply tells from now on.
func (c *core) setKick(kick func()) {
	c.mu.Lock()
	c.kick = kick
	c.mu.Unlock()
}

// kickRoutes asks the route announcer to look again (flow sync's copy is
// done).
func (c *core) kickRoutes() {
	c.mu.Lock()
	kick := c.kick
	c.mu.Unlock()
	kick()
}

// Flows, SetFlow and FlowEvents hand flow sync the data plane's
// connection table.
func (c *core) Flows() ([]loader.Flow, error) { return c.dp.Flows() }
func (c *core) SetFlow(f loader.Flow) error   { return c.dp.SetFlow(f) }
func (c *core) FlowEvents() (flowsync.FlowReader, error) {
	return flowEvents{c.dp}.FlowEvents()
}

// Stats and FlowCount read the data plane's own counters (metrics).
func (c *core) Stats() (map[loader.Stat]loader.Counter, error) { return c.dp.Stats() }
func (c *core) FlowCount() (int, error)                        { return c.dp.FlowCount() }

// KeepLocal stores a state as the last applied (the bbolt file). When
// that fails (a full disk), the state is still the one to apply: it is
// remembered, logged and kept by KeepPending once the disk has room.
func (c *core) KeepLocal(st state.State) (state.State, error) {
	kept, err := c.store.Replace(st)
	if err != nil {
		err = fmt.Errorf("revision %d: %w", st.Revision, err)
		if c.unkept.Swap(&st) == nil {
			c.log.Error("cannot keep the state in --state-dir; it is applied, and kept when the disk has room", "dir", c.store.Path(), "err", err)
			c.events.Add(api.Event{Kind: "config", Reason: "state not kept on disk (applied all the same; kept when the disk has room): " + err.Error(), Revision: st.Revision})
		}
		return state.State{}, err
	}
	c.unkept.Store(nil) // what the file lagged behind with is older
	return kept, nil
}

// KeepPending tries again to keep a state the bbolt file could not, if it
// is still the committed one (a newer one is kept on its own).
func (c *core) KeepPending() {
	p := c.unkept.Load()
	if p == nil {
		return
	}
	if !c.wmu.TryLock() {
		return // a change or a replica is being written: next time
	}
	defer c.wmu.Unlock()
	if p.Revision != c.Revision() {
		c.unkept.CompareAndSwap(p, nil)
		return
	}
	if _, err := c.store.Replace(*p); err == nil && c.unkept.CompareAndSwap(p, nil) {
		c.log.Info("kept the state in --state-dir", "revision", p.Revision)
		c.events.Add(api.Event{Kind: "config", Reason: fmt.Sprintf("state of revision %d kept on disk", p.Revision), Revision: p.Revision})
	}
}

// Archive lists the archived states.
func (c *core) Archive() ([]state.ArchiveEntry, error) { return c.store.Archive() }

// recordAvailabilityLocked appends to the persisted timeline every backend
// and VIP whose availability changed with the last apply. A VIP is
// available while it has min_active usable backends, or (failover) a
// usable primary.
func (c *core) recordAvailabilityLocked() {
	now := time.Now()
	var evs []state.TimelineEvent
	seen := map[availability.Subject]bool{}
	note := func(k availability.Subject, avail bool) {
		seen[k] = true
		if old, ok := c.availability[k]; ok && old == avail {
			return
		}
		c.availability[k] = avail
		evs = append(evs, state.TimelineEvent{Time: now, VIP: k.VIP, Backend: k.Backend, Available: avail})
	}
	for _, v := range c.state.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		view, _, _ := c.rec.View(k)
		usable := 0
		primaryUsable := false
		for _, b := range v.Backends {
			bv := view[netip.MustParseAddr(b.Addr)]
			ok := bv.Health == health.Up && !b.Disabled && bv.MACErr == nil
			note(availability.Subject{VIP: v.VIP, Backend: b.Addr}, ok)
			if bv.Usable {
				usable++
				if b.Addr == v.Primary {
					primaryUsable = true
				}
			}
		}
		avail := usable >= v.MinActive
		if v.Policy == state.PolicyFailover {
			avail = primaryUsable
		}
		note(availability.Subject{VIP: v.VIP}, avail)
	}
	for k := range c.availability {
		if !seen[k] {
			delete(c.availability, k) // removed from the state: its timeline just ends
		}
	}
	if err := c.store.AppendTimeline(evs); err != nil {
		c.log.Error("record availability", "err", err)
	}
}

// Availability reports measured and modelled availability.
func (c *core) Availability() (api.AvailabilityReport, error) {
	tl, err := c.store.Timeline()
	if err != nil {
		return api.AvailabilityReport{}, err
	}
	return availability.Build(c.State(), tl, time.Now()), nil
}
