// Package reconcile turns a view (the desired state with every backend's
// verdicts, control/view) into the data plane's maps: VIPs, backend
// entries and Maglev rings, writing only what differs, through Maps.
package reconcile

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sluicelb/sluice/control/maglev"
	"github.com/sluicelb/sluice/control/neigh"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
)

// Maps are the data plane's tables as the reconciler writes them
// (loader.Datapath). Each write reports whether it changed anything.
type Maps interface {
	VIPs() (map[loader.VIPKey]loader.VIP, error)
	SetVIP(loader.VIPKey, loader.VIP) (bool, error)
	DeleteVIP(loader.VIPKey) error
	Backends() (map[uint32]loader.Backend, error)
	SetBackend(uint32, loader.Backend) (bool, error)
	ClearBackend(uint32) error
	ResetBackendCounter(uint32) error
	ReplaceRing(loader.VIPKey, []uint32) (bool, error)
	Ring(loader.VIPKey) ([]uint32, error)
}

// BackendView is the reconciler's verdict for one backend.
type BackendView struct {
	Index  uint32 // data-plane backend index
	Usable bool
	Drain  bool
	InRing bool
	Health health.State
	MACErr error
	// ringable: its ring verdict calls it up.
	ringable bool
	percent  int // of its configured weight the ring gives it
}

// Reconciler turns views into data-plane maps. It rewrites only what
// differs: an unchanged intent writes nothing.
type Reconciler struct {
	dp   Maps
	macs *neigh.Cache
	seed uint64

	mu     sync.Mutex
	vipIDs map[state.VIPKey]uint32
	beIdx  map[beKey]uint32
	views  map[state.VIPKey]map[netip.Addr]BackendView
	// rings remembers what each VIP's ring was built from, so that a
	// change elsewhere rebuilds only the rings whose members changed.
	rings map[state.VIPKey]string
	// maglev keeps its memory from ring to ring (guarded by mu).
	maglev maglev.Builder
	// rebuilds counts each VIP's ring swaps.
	rebuilds map[state.VIPKey]uint64

	// flagMu guards every backend entry write, and the fast path (Out)
	// that takes backends out while an Apply holds mu: a ring swap waits
	// for an RCU grace period, a health verdict must not.
	flagMu  sync.Mutex
	entries map[uint32]loader.Backend // each entry as last written
	index   map[BackendRef]uint32     // each entry's index by VIP and address
	outs    map[uint32]time.Time      // entries Out cleared, and when
}

type beKey struct {
	vip  uint32
	addr netip.Addr
}

// New adopts the VIP ids and backend indices already in the data
// plane, so a restarted daemon keeps every entry where it was. MACs are
// resolved through macs off Apply's path; resolved is called (with no
// lock held) each time a resolution finished, to apply again.
func New(dp Maps, macs neigh.MACResolver, seed uint64, resolved func()) (*Reconciler, error) {
	r := &Reconciler{dp: dp, macs: neigh.NewCache(macs, resolved), seed: seed, vipIDs: map[state.VIPKey]uint32{}, beIdx: map[beKey]uint32{},
		views: map[state.VIPKey]map[netip.Addr]BackendView{}, rings: map[state.VIPKey]string{}, rebuilds: map[state.VIPKey]uint64{},
		entries: map[uint32]loader.Backend{}, index: map[BackendRef]uint32{}, outs: map[uint32]time.Time{}}
	vips, err := dp.VIPs()
	if err != nil {
		return nil, err
	}
	for k, v := range vips {
		r.vipIDs[modelKey(k)] = v.ID
	}
	bes, err := dp.Backends()
	if err != nil {
		return nil, err
	}
	for idx, b := range bes {
		r.beIdx[beKey{b.VIPID, b.Addr}] = idx
		r.macs.Adopt(b.Addr, b.MAC)
	}
	return r, nil
}

// AdoptedHealth reads the backend table once and returns a lookup that
// reports, for backends already in the data plane, whether they are usable:
// a restarted daemon starts its checks from there instead of from "down",
// so no flow notices the restart.
func (r *Reconciler) AdoptedHealth() func(vip state.VIPKey, addr netip.Addr) (health.State, bool) {
	bes, err := r.dp.Backends()
	return func(vip state.VIPKey, addr netip.Addr) (health.State, bool) {
		if err != nil {
			return "", false
		}
		r.mu.Lock()
		id, ok := r.vipIDs[vip]
		idx, found := r.beIdx[beKey{id, addr}]
		r.mu.Unlock()
		if !ok || !found {
			return "", false
		}
		if bes[idx].Flags&loader.BackendUsable != 0 {
			return health.Up, true
		}
		return health.Down, true
	}
}

// Result says what one Apply wrote.
type Result struct {
	Writes int // map writes (0 when nothing changed)
	// FirstWrite is when the first map write completed: for a backend
	// going down, the moment the data plane stops using it.
	FirstWrite time.Time
	// Done is when the apply finished, every write included.
	Done time.Time
}

// Apply makes the data plane match view v: its state under its verdicts.
// A backend Out took out after v was built stays out.
func (r *Reconciler) Apply(ctx context.Context, v *view.View) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := &applying{r: r, ctx: ctx, v: v, started: v.Built, want: map[state.VIPKey]bool{}, keepBackends: map[uint32]bool{},
		views: map[state.VIPKey]map[netip.Addr]BackendView{}}
	err := a.run(v.State)
	a.res.Done = time.Now()
	return a.res, err
}

// applying is one Apply in progress (under the reconciler's lock).
type applying struct {
	r            *Reconciler
	ctx          context.Context
	v            *view.View
	started      time.Time // before the view read any health
	res          Result
	want         map[state.VIPKey]bool
	keepBackends map[uint32]bool
	views        map[state.VIPKey]map[netip.Addr]BackendView
}

// count notes one map write that changed something.
func (a *applying) count(changed bool, err error) error {
	if changed {
		if a.res.Writes == 0 {
			a.res.FirstWrite = time.Now()
		}
		a.res.Writes++
	}
	return err
}

func (a *applying) run(s state.State) error {
	for _, v := range s.VIPs {
		if err := a.vip(v); err != nil {
			return err
		}
	}
	if err := a.prune(); err != nil {
		return err
	}
	a.r.views = a.views
	return nil
}

// vip writes one VIP, its backends and, when its members changed, its ring.
func (a *applying) vip(v state.VIP) error {
	r := a.r
	k, err := state.ParseVIPKey(v.VIP)
	if err != nil {
		return err
	}
	a.want[k] = true
	id, err := r.vipID(k)
	if err != nil {
		return err
	}
	fwd, _ := loader.ParseForward(v.Forward)
	if err := a.count(r.dp.SetVIP(DataKey(k), loader.VIP{ID: id, Forward: fwd, GUEPort: v.GUEPort, UDPTimeout: time.Duration(v.UDPTimeout)})); err != nil {
		return err
	}
	view := map[netip.Addr]BackendView{}
	var active, standby []maglev.Backend
	for _, b := range v.Backends {
		bv, err := a.backend(k, id, v, b)
		if err != nil {
			return err
		}
		addr := netip.MustParseAddr(b.Addr)
		view[addr] = bv
		if bv.ringable && !bv.Drain {
			// Weights in percent of the configured one: maglev reduces
			// them by their GCD, so equal percentages build the ring
			// the configured weights alone would.
			mb := maglev.Backend{ID: addr.String(), Weight: b.Weight * uint32(bv.percent), Slot: bv.Index}
			if b.Standby {
				standby = append(standby, mb)
			} else {
				active = append(active, mb)
			}
		}
	}
	members := ringMembers(v, active, standby)
	for _, m := range members {
		bv := view[netip.MustParseAddr(m.ID)]
		bv.InRing = true
		view[netip.MustParseAddr(m.ID)] = bv
	}
	a.views[k] = view
	return a.ring(k, id, v, members)
}

// backend writes one backend entry and returns its verdict.
func (a *applying) backend(k state.VIPKey, id uint32, v state.VIP, b state.Backend) (BackendView, error) {
	r := a.r
	addr := netip.MustParseAddr(b.Addr)
	idx, err := r.backendIndex(id, addr)
	if err != nil {
		return BackendView{}, err
	}
	a.keepBackends[idx] = true
	in := a.v.Of(k, addr)
	hs, adj := in.Health.State, in.Weight
	bv := BackendView{Index: idx, Health: hs, Drain: b.Drain || b.Weight == 0 || adj.Drain, percent: min(100, max(1, adj.Percent))}
	bv.ringable = in.Ring == health.Up && !b.Disabled && !adj.Down
	// This node sends a backend new flows only if it sees it up itself:
	// one the cluster calls up but this node cannot reach stays in the
	// (shared) ring, and the data plane probes past its slots.
	bv.Usable = bv.ringable && hs == health.Up
	if v.Policy == state.PolicyFailover {
		// Replicas must not keep tracked flows: nothing may ever reach
		// two primaries.
		bv.Usable = bv.Usable && addr.String() == v.Primary
		bv.ringable = bv.ringable && addr.String() == v.Primary
		bv.Drain = false
	}
	mac, merr := r.macs.Get(a.ctx, addr, b.MAC)
	bv.MACErr = merr
	if merr != nil {
		bv.Usable = false
		if !a.v.Shared {
			bv.ringable = false // alone, a node rings only what it can reach
		}
	}
	flags := loader.BackendFlags(0)
	if bv.Usable {
		flags |= loader.BackendUsable
	}
	if bv.Drain {
		flags |= loader.BackendDraining
	}
	if mac == nil {
		mac = net.HardwareAddr{0, 0, 0, 0, 0, 0}
	}
	return bv, a.count(a.writeBackend(BackendRef{k, addr}, idx, loader.Backend{Addr: addr, VIPID: id, Flags: flags, MAC: mac}))
}

// writeBackend writes one backend entry. An entry Out cleared after this
// Apply read the health stays unusable: this Apply's view is older.
func (a *applying) writeBackend(ref BackendRef, idx uint32, b loader.Backend) (bool, error) {
	r := a.r
	r.flagMu.Lock()
	defer r.flagMu.Unlock()
	if at, ok := r.outs[idx]; ok {
		if at.Before(a.started) {
			delete(r.outs, idx)
		} else {
			b.Flags &^= loader.BackendUsable
		}
	}
	r.index[ref] = idx
	changed, err := r.dp.SetBackend(idx, b)
	if err == nil {
		r.entries[idx] = b
	}
	return changed, err
}

// Out takes backends out of the data plane at once, ahead of the Apply
// that follows a health verdict: their usable flag is cleared without
// waiting for an Apply in progress (and its ring swap). Until an Apply
// that began after Out, no Apply marks them usable again. It returns when
// the first flag was written (zero if none was usable).
func (r *Reconciler) Out(refs []BackendRef) (time.Time, error) {
	r.flagMu.Lock()
	defer r.flagMu.Unlock()
	var first time.Time
	for _, ref := range refs {
		idx, ok := r.index[ref]
		e, written := r.entries[idx]
		if !ok || !written || e.Flags&loader.BackendUsable == 0 {
			continue
		}
		r.outs[idx] = time.Now()
		e.Flags &^= loader.BackendUsable
		if _, err := r.dp.SetBackend(idx, e); err != nil {
			return first, err
		}
		r.entries[idx] = e
		if first.IsZero() {
			first = time.Now()
		}
	}
	return first, nil
}

// ringMembers picks who is in a VIP's ring: the usable actives, plus the
// standbys while the actives are fewer than min_active; for a failover
// VIP, exactly its primary.
func ringMembers(v state.VIP, active, standby []maglev.Backend) []maglev.Backend {
	if v.Policy == state.PolicyFailover {
		for _, m := range append(slices.Clone(active), standby...) {
			if m.ID == v.Primary {
				return []maglev.Backend{{ID: m.ID, Weight: 1, Slot: m.Slot}}
			}
		}
		return nil
	}
	if len(active) < v.MinActive {
		return append(slices.Clone(active), standby...)
	}
	return active
}

// ring rebuilds and swaps a VIP's ring when its members changed.
func (a *applying) ring(k state.VIPKey, id uint32, v state.VIP, members []maglev.Backend) error {
	r := a.r
	fp := fmt.Sprintf("%d/%d/%v", v.RingSize, id, members)
	// A failover VIP whose primary is unusable keeps its ring: the
	// primary's cleared flag already makes the data plane drop, and
	// skipping a ring swap (an RCU grace period) gets the promotion
	// started sooner.
	keep := v.Policy == state.PolicyFailover && len(members) == 0
	if r.rings[k] == fp || keep {
		return nil
	}
	ring, err := r.maglev.Build(members, v.RingSize, r.seed)
	if err != nil {
		return fmt.Errorf("vip %s: %w", v.VIP, err)
	}
	if err := a.count(r.dp.ReplaceRing(DataKey(k), ring)); err != nil {
		return err
	}
	r.rings[k] = fp
	r.rebuilds[k]++
	return nil
}

// prune removes what is no longer wanted, after the rings stopped naming it.
func (a *applying) prune() error {
	r := a.r
	for k := range r.vipIDs {
		if !a.want[k] {
			if err := r.dp.DeleteVIP(DataKey(k)); err != nil {
				return err
			}
			a.res.Writes++
			delete(r.vipIDs, k)
			delete(r.rings, k)
			delete(r.rebuilds, k)
		}
	}
	for bk, idx := range r.beIdx {
		if !a.keepBackends[idx] {
			if err := r.clearBackend(idx); err != nil {
				return err
			}
			a.res.Writes++
			delete(r.beIdx, bk)
		}
	}
	return nil
}

// clearBackend empties entry idx and forgets it.
func (r *Reconciler) clearBackend(idx uint32) error {
	r.flagMu.Lock()
	defer r.flagMu.Unlock()
	delete(r.entries, idx)
	delete(r.outs, idx)
	for ref, i := range r.index {
		if i == idx {
			delete(r.index, ref)
		}
	}
	return r.dp.ClearBackend(idx)
}

// Rebuilds is how many times each VIP's ring was swapped.
func (r *Reconciler) Rebuilds() map[state.VIPKey]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[state.VIPKey]uint64, len(r.rebuilds))
	for k, n := range r.rebuilds {
		out[k] = n
	}
	return out
}

// View is the last applied verdict of every backend.
func (r *Reconciler) View(k state.VIPKey) (map[netip.Addr]BackendView, uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.vipIDs[k]
	return r.views[k], id, ok
}

func (r *Reconciler) vipID(k state.VIPKey) (uint32, error) {
	if id, ok := r.vipIDs[k]; ok {
		return id, nil
	}
	used := map[uint32]bool{}
	for _, id := range r.vipIDs {
		used[id] = true
	}
	for id := uint32(0); id < loader.MaxVIPs; id++ {
		if !used[id] {
			r.vipIDs[k] = id
			return id, nil
		}
	}
	return 0, fmt.Errorf("vip %s: all %d vip ids in use", k, loader.MaxVIPs)
}

func (r *Reconciler) backendIndex(vip uint32, addr netip.Addr) (uint32, error) {
	if idx, ok := r.beIdx[beKey{vip, addr}]; ok {
		return idx, nil
	}
	used := map[uint32]bool{}
	for _, idx := range r.beIdx {
		used[idx] = true
	}
	for idx := uint32(1); idx < loader.MaxBackends; idx++ {
		if !used[idx] {
			r.beIdx[beKey{vip, addr}] = idx
			if err := r.dp.ResetBackendCounter(idx); err != nil {
				return 0, err
			}
			return idx, nil
		}
	}
	return 0, fmt.Errorf("backend %s: all %d backend entries in use", addr, loader.MaxBackends-1)
}

// BackendRef names a backend entry independently of its index, which
// differs between nodes.
type BackendRef struct {
	VIP  state.VIPKey
	Addr netip.Addr
}

// BackendRefs maps every backend index in use to its VIP and address.
func (r *Reconciler) BackendRefs() map[uint32]BackendRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make(map[uint32]state.VIPKey, len(r.vipIDs))
	for k, id := range r.vipIDs {
		ids[id] = k
	}
	out := make(map[uint32]BackendRef, len(r.beIdx))
	for bk, idx := range r.beIdx {
		out[idx] = BackendRef{VIP: ids[bk.vip], Addr: bk.addr}
	}
	return out
}

// FlowBackend is the local index of backend addr of the VIP a client
// flow to dst/proto belongs to (the VIP of that port, else the
// address's port-0 VIP), if both exist here.
func (r *Reconciler) FlowBackend(dst netip.AddrPort, proto loader.Proto, addr netip.Addr) (uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.vipIDs[state.VIPKey{Addr: dst.Addr(), Port: dst.Port(), Proto: state.Proto(proto)}]
	if !ok {
		if id, ok = r.vipIDs[state.VIPKey{Addr: dst.Addr(), Proto: state.Proto(proto)}]; !ok {
			return 0, false
		}
	}
	idx, ok := r.beIdx[beKey{id, addr}]
	return idx, ok
}

// RefreshMACs re-resolves every resolved MAC; it reports whether any
// changed. It blocks (up to the resolver's wait per address), and holds
// no lock while it does.
func (r *Reconciler) RefreshMACs(ctx context.Context) bool { return r.macs.Refresh(ctx) }

// DataKey is the data plane's key of a VIP: the model's keys and the
// loader's name the same thing, each in its own package.
func DataKey(k state.VIPKey) loader.VIPKey {
	return loader.VIPKey{Addr: k.Addr, Port: k.Port, Proto: loader.Proto(k.Proto)}
}

// modelKey is the model's key of a data-plane VIP.
func modelKey(k loader.VIPKey) state.VIPKey {
	return state.VIPKey{Addr: k.Addr, Port: k.Port, Proto: state.Proto(k.Proto)}
}

// ReadRing reads VIP k's active ring back from the data plane.
func (r *Reconciler) ReadRing(k state.VIPKey) ([]uint32, error) { return r.dp.Ring(DataKey(k)) }
