package pair

import (
	"context"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
)

// The pair as the daemon's topology: the master commits to its bbolt
// file and pushes what it committed; the backup takes the master's state
// and refuses changes of its own.

// ErrNotMaster refuses changes on the backup of an LB pair.
var ErrNotMaster = state.Conflict("this node is the backup of an LB pair: make changes on the master (see `sluice ha status`)")

// Load starts from the state applied here last: the master's reaches
// this node by sync.
func (p *Pair) Load(_ context.Context, local state.State) (state.State, uint64, error) {
	return local, local.Revision, nil
}

// Commit writes a change to this node's bbolt file.
func (p *Pair) Commit(_ context.Context, _ bool, change func(*state.State) error) (state.State, error) {
	return p.opts.Store.Commit(change)
}

// Accept takes every state the master sends: a push older than this
// node's is dropped as it arrives (servePush).
func (p *Pair) Accept(state.State, uint64) bool { return true }

// Applied invalidates the backup's synced flag: its health view may have
// moved.
func (p *Pair) Applied(*view.View) { p.Invalidate() }

// Hold: the master runs hooks for as long as it is the master; its
// epochs, committed first, fence what the peer does after a takeover.
func (p *Pair) Hold(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if !p.IsCoordinator() {
		return nil, nil, ErrNotMaster
	}
	hctx, cancel := context.WithCancel(ctx)
	return hctx, cancel, nil
}

// MayChange refuses changes on the backup.
func (p *Pair) MayChange() error {
	if !p.IsCoordinator() {
		return ErrNotMaster
	}
	return nil
}

// MayCoordinate refuses promotions and drills on the backup.
func (p *Pair) MayCoordinate() error { return p.MayChange() }

// RingRule: each node of a pair builds its rings from its own verdicts.
func (p *Pair) RingRule() view.RingRule { return nil }

// Shared: the pair's rings are each node's own.
func (p *Pair) Shared() bool { return false }

// HAStatus is `sluice ha status`.
func (p *Pair) HAStatus() api.HAStatus { return p.Status() }

// ClusterStatus: a pair keeps its state in bbolt.
func (p *Pair) ClusterStatus(context.Context) api.ClusterStatus {
	return api.ClusterStatus{Store: "bolt", Revision: p.host.Revision(), StoreUp: true, Nodes: []api.ClusterNode{}}
}

// Synced: a pair announces nothing over BGP; its master holds the VIPs.
func (p *Pair) Synced(uint64) bool { return true }

// CopyingFlows: the backup copies the master's table before it may
// pre-empt, not before it announces.
func (p *Pair) CopyingFlows() bool { return false }
