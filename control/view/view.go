// Package view is what one apply decides from: the desired state and,
// for every backend, its health check's verdict, its weight verdict and
// the verdict that places it in its VIP's ring, each read once when the
// view is built and fixed from then on. The reconciler, status and
// promotions read views; nothing reads health, weights or the cluster's
// quorum behind a view's back.
package view

import (
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
)

// Ref names a backend of a VIP.
type Ref struct {
	VIP  state.VIPKey
	Addr netip.Addr
}

// Backend is what a view holds of one backend.
type Backend struct {
	// Check is its health check, as the checker runs it.
	Check health.Check
	// Health is the check's status: Up for a backend without a check, and
	// Down (undecided, no reason) for one the checker does not run yet.
	Health health.Status
	// Known: the checker runs its check, or it has none.
	Known bool
	// Ring is the verdict that decides ring membership: the cluster's
	// when the rings are shared, else Health.State.
	Ring health.State
	// Weight is the weight engine's verdict (agent, load, slow start).
	Weight weight.Verdict
}

// View is the fixed input of one apply.
type View struct {
	State    state.State
	Backends map[Ref]Backend
	// Shared: ring membership is a cluster's verdict, the same on every
	// node; a node that cannot reach a backend keeps it in the ring.
	Shared bool
	// Built is when the view began reading its sources: a verdict that
	// came later is newer than the view.
	Built time.Time
}

// Of is backend addr of VIP k; a backend the view lacks is down.
func (v *View) Of(k state.VIPKey, addr netip.Addr) Backend {
	if b, ok := v.Backends[Ref{k, addr}]; ok {
		return b
	}
	return Backend{Health: health.Status{State: health.Down}, Ring: health.Down, Weight: weight.Verdict{Percent: 100}}
}

// Health is where a view reads check verdicts (health.Manager).
type Health interface {
	Status(health.ID) (health.Status, bool)
}

// Weights is where it reads weight verdicts (weight.Engine), telling
// each backend when its check last brought it up (for slow start).
type Weights interface {
	Verdict(k weight.Key, upSince time.Time) weight.Verdict
}

// RingRule is a cluster's quorum as it stood when the view was built: the
// ring verdict on a backend this node sees as local.
type RingRule interface {
	Ring(vip, addr string, local health.State) health.State
}

// Sources are what a view is built from. Weights and Ring may be nil
// (full weight; each node's own verdict).
type Sources struct {
	Health  Health
	Weights Weights
	Ring    RingRule
	Shared  bool
}

// Build reads every backend of s once from src. s must be valid.
func Build(s state.State, src Sources) *View {
	v := &View{State: s, Backends: map[Ref]Backend{}, Shared: src.Shared, Built: time.Now()}
	for _, sv := range s.VIPs {
		k, _ := state.ParseVIPKey(sv.VIP)
		for _, b := range sv.Backends {
			v.Backends[Ref{k, netip.MustParseAddr(b.Addr)}] = backend(k, sv.VIP, b, src)
		}
	}
	return v
}

func backend(k state.VIPKey, vip string, b state.Backend, src Sources) Backend {
	out := Backend{Check: health.For(k, b)}
	out.Health, out.Known = status(out.Check, src.Health)
	if !out.Known {
		out.Health = health.Status{State: health.Down}
	}
	out.Ring = out.Health.State
	if src.Ring != nil {
		out.Ring = src.Ring.Ring(vip, b.Addr, out.Health.State)
	}
	out.Weight = weight.Verdict{Percent: 100}
	if src.Weights != nil {
		var up time.Time
		if h := out.Health; h.State == health.Up && h.Changed {
			up = h.Since
		}
		out.Weight = src.Weights.Verdict(weight.Key{VIP: vip, Addr: b.Addr}, up)
	}
	return out
}

// status asks the checker for c's status, once; a backend without a check
// is up without asking.
func status(c health.Check, h Health) (health.Status, bool) {
	if c.Probe.Type == health.None {
		return health.Status{State: health.Up, Reason: "no health check", Decided: true}, true
	}
	if h == nil {
		return health.Status{}, false
	}
	return h.Status(c.ID())
}
