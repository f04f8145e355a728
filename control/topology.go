package control

import (
	"context"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
)

// topology is how this node shares its desired state and its role with
// others: alone on its bbolt file (single), as one node of an LB pair
// (control/pair) or of a cluster on etcd (control/cluster). The daemon
// holds exactly one; it owns the commit, the rules for accepting a
// replica, coordination, its peers and flow sync, and its part of status.
type topology interface {
	// Load is the state to start from, given local, the state applied
	// here last, and the revision of the shared store it came from.
	Load(ctx context.Context, local state.State) (state.State, uint64, error)
	// Commit writes a change where the desired state lives; fenced only
	// while this node still coordinates.
	Commit(ctx context.Context, fenced bool, change func(*state.State) error) (state.State, error)
	// Accept says whether a replicated state may replace what this node
	// applied, which came from the shared store's revision have.
	Accept(next state.State, have uint64) bool
	// Committed is told of every commit that changed the revision,
	// Applied of every apply, with the view it decided from.
	Committed()
	Applied(v *view.View)
	// MayChange refuses changes here (a pair's backup); MayCoordinate
	// promotions and drills too (a cluster node that does not coordinate).
	MayChange() error
	MayCoordinate() error
	IsCoordinator() bool
	// Hold is called right before a promotion or demotion hook: the
	// context it returns lasts while this node may still act as the
	// coordinator (a cluster's lease, renewed with a margin).
	Hold(ctx context.Context) (context.Context, context.CancelFunc, error)
	Role() string
	Node() string // this node's name, "" when it has none of its own
	// RingRule is the verdict rings are built from now, nil for each
	// node's own; Shared says whether rings are shared (and the same on
	// every node).
	RingRule() view.RingRule
	Shared() bool
	// Start runs it once the first apply is done, Stop ends it on
	// shutdown (forwarding goes on), Close releases a never started one.
	Start(ctx context.Context) error
	Stop()
	Close()
	HAStatus() api.HAStatus
	Handoff() (api.HAStatus, error)
	ClusterStatus(ctx context.Context) api.ClusterStatus
	Collectors() []prometheus.Collector
	// Synced: the newest shared state (have applied) is applied here;
	// CopyingFlows: this node is still copying its peers' flow tables.
	// A node announces its VIPs only when synced and done copying.
	Synced(have uint64) bool
	CopyingFlows() bool
}

// single is a lone node: its state lives in its bbolt file, and it
// coordinates alone.
type single struct {
	store *state.BoltStore
	rev   func() uint64
}

func (s single) Load(_ context.Context, local state.State) (state.State, uint64, error) {
	return local, local.Revision, nil
}

func (s single) Commit(_ context.Context, _ bool, change func(*state.State) error) (state.State, error) {
	return s.store.Commit(change)
}

func (single) Accept(state.State, uint64) bool { return true }
func (single) Committed()                      {}
func (single) Applied(*view.View)              {}
func (single) MayChange() error                { return nil }
func (single) MayCoordinate() error            { return nil }
func (single) IsCoordinator() bool             { return true }
func (single) Hold(ctx context.Context) (context.Context, context.CancelFunc, error) {
	hctx, cancel := context.WithCancel(ctx)
	return hctx, cancel, nil
}
func (single) Role() string                { return "single" }
func (single) Node() string                { h, _ := os.Hostname(); return h }
func (single) RingRule() view.RingRule     { return nil }
func (single) Shared() bool                { return false }
func (single) Start(context.Context) error { return nil }
func (single) Stop()                       {}
func (single) Close()                      {}
func (single) Synced(uint64) bool          { return true }
func (single) CopyingFlows() bool          { return false }
func (single) Collectors() []prometheus.Collector {
	return nil
}

func (s single) HAStatus() api.HAStatus { return api.HAStatus{Role: "single", Revision: s.rev()} }

func (single) Handoff() (api.HAStatus, error) {
	return api.HAStatus{}, state.Conflict("ha failover: this daemon is not part of an LB pair (it was started without peers)")
}

func (s single) ClusterStatus(context.Context) api.ClusterStatus {
	return api.ClusterStatus{Store: "bolt", Revision: s.rev(), StoreUp: true, Nodes: []api.ClusterNode{}}
}
