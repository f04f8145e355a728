package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
)

// The node as the daemon's topology: the desired state lives in etcd,
// changes are etcd transactions (fenced for the coordinator's), a state
// from the watch is taken only if newer than the last one applied, rings
// follow the quorum's verdict, and flow sync shares the connection table.

// Load takes the cluster's state from etcd and checks the seed; the bbolt
// file then keeps it as the last applied. When etcd does not answer, the
// node goes on from what it applied last. When etcd holds no state for
// the cluster while this node forwards some (a fresh etcd, a typo in
// --cluster), joining would let the first change replace what it
// forwards: the node refuses to join, unless told (--cluster-init) to
// seed the cluster with that state.
func (c *Node) Load(ctx context.Context, local state.State) (state.State, uint64, error) {
	st, fromEtcd, err := c.load(ctx, c.opts.Seed, local)
	if err != nil {
		return state.State{}, 0, err
	}
	if !fromEtcd {
		return local, 0, nil // etcd is away: forward from the last state applied
	}
	if st.Revision == 0 && len(local.VIPs) > 0 {
		if !c.opts.Init {
			return state.State{}, 0, fmt.Errorf("%w: etcd %v holds no state for cluster %q, while this node forwards %d VIPs (revision %d) that the first change would replace; "+
				"if it is a new etcd cluster, start this node once with --cluster-init to seed it with them (or restore a backup through a node that holds none); else check --cluster and --etcd-endpoints",
				ErrEmptyCluster, c.opts.Endpoints, c.opts.Cluster, len(local.VIPs), local.Revision)
		}
		if st, err = c.seed(ctx, local); err != nil {
			return state.State{}, 0, err
		}
	}
	if kept, err := c.h.KeepLocal(st); err == nil {
		st = kept
	} // else a full disk: forwarded all the same, kept later (KeepLocal says so)
	return st, st.Revision, nil
}

// ErrEmptyCluster refuses a node that forwards a state into a cluster
// that holds none.
var ErrEmptyCluster = errors.New("--cluster: refusing to join an empty cluster")

// seed writes local, the state this node forwards, into the empty
// cluster (--cluster-init), in one guarded transaction; if another node
// seeded it meanwhile, the node takes that state instead.
func (c *Node) seed(ctx context.Context, local state.State) (state.State, error) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	st, err := c.store.Commit(sctx, func(cur *state.State) error {
		if len(cur.VIPs) == 0 {
			cur.VIPs = local.Clone().VIPs
		}
		return nil
	})
	if err != nil {
		return state.State{}, fmt.Errorf("--cluster-init: seed cluster %q with the %d VIPs forwarded here: %w", c.opts.Cluster, len(local.VIPs), err)
	}
	c.noteSeen(st.Revision)
	c.log.Info("cluster: seeded the empty cluster with the state forwarded here", "cluster", c.opts.Cluster, "vips", len(st.VIPs), "revision", st.Revision)
	c.event(api.Event{Kind: "config", Reason: fmt.Sprintf("cluster: seeded the empty cluster %q with the %d VIPs forwarded here (--cluster-init)", c.opts.Cluster, len(st.VIPs)), Revision: st.Revision})
	return st, nil
}

// Accept takes a state from etcd only if it is newer than the one
// applied here, which came from revision have: revisions only grow, and
// this node's own commit (or a newer state) may have got here first.
func (c *Node) Accept(next state.State, have uint64) bool { return next.Revision > have }

// Committed: etcd's watch tells the other nodes.
func (c *Node) Committed() {}

// Applied publishes this node's applied revision, ring digests and own
// verdicts, as its last apply saw them.
func (c *Node) Applied(v *view.View) {
	c.applied.Store(v)
	c.Kick()
}

// MayChange: every node of a cluster takes changes.
func (c *Node) MayChange() error { return nil }

// MayCoordinate refuses promotions and drills on a node that does not
// hold the coordinator election.
func (c *Node) MayCoordinate() error {
	if !c.IsCoordinator() {
		return state.Conflict("%v: promotions and drills run on the coordinator (see `sluice cluster status`)", ErrNotCoordinator)
	}
	return nil
}

// Hold vouches for this node's coordinator role while a hook runs (see
// Member.Hold).
func (c *Node) Hold(ctx context.Context) (context.Context, context.CancelFunc, error) {
	return c.member.Hold(ctx)
}

// Node is this node's name in the cluster.
func (c *Node) Node() string { return c.opts.Node }

// Shared: the rings are the cluster's, the same on every node.
func (c *Node) Shared() bool { return true }

// Start runs the node in the cluster, and flow sync, until ctx ends.
func (c *Node) Start(ctx context.Context) error {
	if err := c.flows.Start(ctx); err != nil {
		return err
	}
	go c.Run(ctx)
	return nil
}

// Close releases a node that never started.
func (c *Node) Close() {
	c.flows.Close()
	c.Stop()
}

// HAStatus: a cluster node is no LB pair's.
func (c *Node) HAStatus() api.HAStatus { return api.HAStatus{Role: c.Role(), Revision: c.h.Revision()} }

// Handoff: a cluster node has no peer to hand over to.
func (c *Node) Handoff() (api.HAStatus, error) {
	return api.HAStatus{}, state.Conflict("ha failover: this daemon is not part of an LB pair (it was started without peers)")
}

// ClusterStatus is `sluice cluster status`.
func (c *Node) ClusterStatus(ctx context.Context) api.ClusterStatus { return c.Status(ctx) }

// Collectors are the node's metrics and flow sync's.
func (c *Node) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{c}, c.flows.Collectors()...)
}

// CopyingFlows: the peers' tables are still being copied here.
func (c *Node) CopyingFlows() bool { return !c.flows.Copied() }

// localHealth is this node's own verdict on every backend of v, VIP →
// backend → VoteUp | VoteDown, or VoteUndecided until the backend's check
// reached its first verdict here (it does not vote then).
func localHealth(v *view.View) map[string]map[string]string {
	out := map[string]map[string]string{}
	if v == nil {
		return out
	}
	for _, sv := range v.State.VIPs {
		k, _ := state.ParseVIPKey(sv.VIP)
		m := map[string]string{}
		for _, b := range sv.Backends {
			m[b.Addr] = vote(v.Of(k, netip.MustParseAddr(b.Addr)))

		}
		out[sv.VIP] = m
	}
	return out
}

// vote is this node's vote on backend b: up, down, or undecided while
// its check has not decided (a new check, not adopted from the data
// plane, starts down and undecided).
func vote(b view.Backend) string {
	switch {
	case b.Health.State == health.Up:
		return VoteUp
	case !b.Known || !b.Health.Decided:
		return VoteUndecided
	}
	return VoteDown
}

// flows is the node's flow sync, or none.
type flows interface {
	Start(ctx context.Context) error
	Copied() bool
	Collectors() []prometheus.Collector
	Close()
}

type noFlows struct{}

func (noFlows) Start(context.Context) error        { return nil }
func (noFlows) Copied() bool                       { return true }
func (noFlows) Collectors() []prometheus.Collector { return nil }
func (noFlows) Close()                             {}

// FlowEvents opens the data plane's connection-table writes.
type FlowEvents interface {
	FlowEvents() (flowsync.FlowReader, error)
}

// syncing is flow sync with the cluster's live nodes.
type syncing struct {
	s  *flowsync.Syncer
	ev FlowEvents
}

func (f syncing) Start(ctx context.Context) error {
	r, err := f.ev.FlowEvents()
	if err != nil {
		return err
	}
	go f.s.Run(ctx, r)
	return nil
}
func (f syncing) Copied() bool                       { return f.s.Copied() }
func (f syncing) Collectors() []prometheus.Collector { return f.s.Collectors() }
func (f syncing) Close()                             { f.s.Close() }

// SyncFlows shares this node's connection table with the cluster's other
// live nodes (--flow-sync-key): the entries its data plane writes go to
// each of them, and their tables are copied here before the node may
// announce. Call it before Start.
func (c *Node) SyncFlows(o flowsync.Options, host flowsync.Host, dp flowsync.Datapath, ev FlowEvents) error {
	o.Node = c.opts.Node
	s, err := flowsync.New(o, c, host, dp, c.log)
	if err != nil {
		return err
	}
	s.OnJoined = func(j flowsync.Joined) {
		c.event(api.Event{Kind: "config", Reason: fmtJoined(j)})
		if c.OnCopied != nil {
			c.OnCopied() // the announcement waited for this
		}
	}
	c.flows = syncing{s: s, ev: ev}
	return nil
}

func (c *Node) event(e api.Event) {
	if c.OnEvent != nil {
		c.OnEvent(e)
	}
}

func fmtJoined(j flowsync.Joined) string {
	return fmt.Sprintf("flow sync: copied %d flows from %d nodes in %v (%d for backends unknown here; gave up on %v)",
		j.Applied, len(j.From), j.Took.Round(time.Millisecond), j.Unknown, j.GaveUp)
}
