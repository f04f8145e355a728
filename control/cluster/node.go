package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/etcdstore"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
)

// NodeOptions make a daemon one node of a cluster of active nodes that
// share their desired state in etcd.
type NodeOptions struct {
	Endpoints []string
	Cluster   string
	Node      string
	TLS       *tls.Config // nil: plain gRPC
	Quorum    Quorum
	// TTL is the node's lease in seconds (default 3).
	TTL int
	// Dial is the etcd client's dialer (tests: a namespace's); nil is the
	// default one.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Seed is the flow hash and Maglev seed, which every node of the
	// cluster must share (etcd keeps the first node's; Load checks it).
	Seed uint64
	// Init lets a node that forwards a state seed an empty cluster with
	// it (--cluster-init); without it, such a node refuses to join.
	Init bool
}

// Host is the daemon as its cluster node sees it.
type Host interface {
	// ApplyReplica stores and applies a state committed in etcd.
	ApplyReplica(state.State) error
	// Reapply applies the current state again: the cluster's health
	// verdict moved.
	Reapply(what string)
	// KeepLocal stores a state as the last applied (the bbolt file).
	KeepLocal(state.State) (state.State, error)
	State() state.State
	Revision() uint64
	// Status reads this node's kernel rings (their digests) back.
	Status() (api.Status, error)
}

// storeTimeout bounds one etcd request of a change, so that a lost etcd
// refuses a change in seconds instead of hanging the CLI.
const storeTimeout = 3 * time.Second

// Node is the daemon's part in a cluster: etcd holds the desired
// state and the other nodes' health views; the bbolt file keeps the last
// state applied, to forward from when etcd is away at start.
type Node struct {
	// OnEvent receives the node's events (etcd lost and back, the
	// coordinator role, flow sync's copy); OnElected is called, on a
	// goroutine of its own, when this node becomes the coordinator;
	// OnCopied when its peers' flow tables are copied. Set them before
	// Load; any may be nil.
	OnEvent   func(api.Event)
	OnElected func()
	OnCopied  func()

	h      Host
	log    *slog.Logger
	opts   NodeOptions
	addr   string
	cli    *clientv3.Client
	store  *etcdstore.Store
	member *Member

	seen      atomic.Uint64 // newest etcd revision this process applied
	reached   atomic.Bool   // etcd answered this process at least once
	downSince atomic.Int64  // unix ns since etcd last failed a request; 0: answering
	noQuorum  atomic.Bool   // the last health read found a member without a majority
	publish   chan struct{}

	applied atomic.Pointer[view.View] // the view of this node's last apply
	// refusal is why the newest state in etcd is refused (nil: it is
	// not); refusedTotal counts refusals.
	refusal      atomic.Pointer[string]
	refusedTotal atomic.Uint64
	flows        flows

	mu    sync.Mutex
	nodes []Report // the cluster's view the rings were last built from
}

// maxEtcdAnswer bounds what one etcd answer may hold: the whole state
// (at most 1 024 VIPs) or every node's report (MaxReport each).
const maxEtcdAnswer = 64 << 20

// NewNode connects to etcd (without waiting for it); addr is this node's
// address in cluster status.
func NewNode(h Host, o NodeOptions, addr string, log *slog.Logger) (*Node, error) {
	if o.Quorum == "" {
		o.Quorum = Majority
	}
	cfg := clientv3.Config{Endpoints: o.Endpoints, TLS: o.TLS, DialTimeout: storeTimeout, Logger: zap.NewNop(),
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
		// An answer is at most the state's keys or the node keys: the
		// client's own bound is 2 GiB.
		MaxCallRecvMsgSize: maxEtcdAnswer}
	// Reconnect within a second of etcd coming back, not gRPC's default
	// backoff of up to two minutes.
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: time.Second,
	}))
	if o.Dial != nil {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(o.Dial))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("--etcd-endpoints: %w", err)
	}
	c := &Node{h: h, log: log, opts: o, addr: addr, cli: cli, publish: make(chan struct{}, 1), flows: noFlows{}}
	if c.store, err = etcdstore.New(cli, o.Cluster); err != nil {
		cli.Close()
		return nil, fmt.Errorf("--cluster: %w", err)
	}
	c.member, err = New(cli, Options{Cluster: o.Cluster, Name: o.Node, TTL: o.TTL, Log: c.log,
		OnNodes: c.onNodes, OnCoordinator: c.onCoordinator})
	if err != nil {
		cli.Close()
		return nil, err
	}
	return c, nil
}

// load reads the cluster's state and checks the seed. It says whether
// the state came from etcd: when etcd does not answer, the node forwards
// from local, the last state it applied.
func (c *Node) load(ctx context.Context, seed uint64, local state.State) (state.State, bool, error) {
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	err := c.store.EnsureSeed(lctx, seed)
	var st state.State
	if err == nil {
		st, err = c.store.Load(lctx)
	}
	if err == nil {
		c.up()
		c.seen.Store(st.Revision)
		return st, true, nil
	}
	if invalid := (*etcdstore.InvalidError)(nil); errors.As(err, &invalid) {
		c.up()
		c.refused(err)
		return local, false, nil // forward the last good state; the watch takes the next good one
	}
	if lctx.Err() == nil && !isUnavailable(err) {
		return state.State{}, false, err // a seed mismatch, a bad state: refuse to start
	}
	c.down(err)
	c.log.Warn("cluster: etcd unreachable at start; forwarding from the last state applied here",
		"revision", local.Revision, "err", err)
	return local, false, nil
}

// isUnavailable says whether err means that etcd did not answer in time
// (or at all), as opposed to refusing what was asked: the client's own
// deadline, or one that the member ran out of (a member without a
// quorum answers gRPC's Unknown with "context deadline exceeded"), or a
// connection that is gone.
func isUnavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || clientv3.IsConnCanceled(err) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return true
		case codes.Unknown:
			return strings.Contains(s.Message(), context.DeadlineExceeded.Error())
		}
	}
	return false
}

func (c *Node) up() {
	c.reached.Store(true)
	if c.downSince.Swap(0) != 0 {
		c.log.Info("cluster: etcd answers again")
		c.event(api.Event{Kind: "config", Reason: "cluster: store reachable again"})
	}
}

func (c *Node) down(err error) {
	if c.downSince.CompareAndSwap(0, time.Now().UnixNano()) {
		c.log.Warn("cluster: etcd unreachable", "err", err)
		c.event(api.Event{Kind: "config", Reason: "cluster: store unreachable: " + err.Error()})
	}
}

// storeErr names how long etcd has been away.
func (c *Node) storeErr(err error) error {
	c.down(err)
	since := time.Unix(0, c.downSince.Load()).UTC().Format(time.RFC3339)
	if c.noQuorum.Load() && !errors.Is(err, etcdstore.ErrNoQuorum) {
		err = fmt.Errorf("%w: %w", etcdstore.ErrNoQuorum, err)
	}
	return fmt.Errorf("store unreachable since %s (etcd %v): %w", since, c.opts.Endpoints, err)
}

// Synced reports whether this node applied the newest state it has seen
// from etcd (have is the revision it applied), and has reached etcd at
// all since it started: a node that never did may forward an old state.
func (c *Node) Synced(have uint64) bool {
	return c.reached.Load() && have >= c.seen.Load()
}

// Commit is a change made through this node: one guarded etcd
// transaction; the bbolt file then keeps it as the last state applied.
// Fenced, for what only the coordinator may record (a promotion's epoch),
// the transaction also requires that this node still holds the election,
// so a coordinator cut off or replaced cannot record it; refused, it is
// ErrNotCoordinator.
func (c *Node) Commit(ctx context.Context, fenced bool, change func(*state.State) error) (state.State, error) {
	if !fenced {
		return c.commitIf(ctx, nil, change)
	}
	fence, err := c.member.Fence()
	if err != nil {
		return state.State{}, err
	}
	return c.commitIf(ctx, []clientv3.Cmp{fence}, change)
}

func (c *Node) commitIf(ctx context.Context, fence []clientv3.Cmp, change func(*state.State) error) (state.State, error) {
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	st, err := c.store.CommitIf(cctx, fence, change)
	if errors.Is(err, etcdstore.ErrFenced) {
		return state.State{}, fmt.Errorf("%w (its election ended)", ErrNotCoordinator)
	}
	if err != nil {
		if cctx.Err() != nil || isUnavailable(err) {
			return state.State{}, c.storeErr(err)
		}
		return state.State{}, err
	}
	c.up()
	c.noteSeen(st.Revision)
	if kept, err := c.h.KeepLocal(st); err == nil {
		return kept, nil
	}
	return st, nil // committed in etcd: applied here all the same (KeepLocal logged why the file lags)
}

func (c *Node) noteSeen(rev uint64) {
	for {
		old := c.seen.Load()
		if rev <= old || c.seen.CompareAndSwap(old, rev) {
			return
		}
	}
}

// Run keeps the node in the cluster until ctx ends: its membership and
// campaign, the state watch and the publisher of its node key.
func (c *Node) Run(ctx context.Context) {
	go c.member.Run(ctx)
	go c.member.Campaign(ctx)
	go c.publisher(ctx)
	states := make(chan state.State, 16)
	go c.store.Watch(ctx, c.seen.Load(), states, c.refused)
	go c.watchHealth(ctx)
	c.Kick()
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-states:
			st = newest(st, states)
			c.up()
			c.refusal.Store(nil)
			if st.Revision <= c.seen.Load() {
				continue // this node's own commit, applied already
			}
			c.noteSeen(st.Revision)
			if err := c.h.ApplyReplica(st); err != nil {
				c.log.Error("cluster: apply state from etcd", "revision", st.Revision, "err", err)
			}
			c.Kick()
		}
	}
}

// refused notes a state in etcd that this node will not apply: logged,
// an event, counted, and shown in cluster status until a good state
// comes. The node keeps forwarding the last good one.
func (c *Node) refused(err error) {
	c.refusedTotal.Add(1)
	msg := health.CleanReason(err.Error())
	c.refusal.Store(&msg)
	c.log.Error("cluster: refused the state in etcd; forwarding the last good one", "err", err, "applied_revision", c.h.Revision())
	c.event(api.Event{Kind: "config", Reason: fmt.Sprintf("cluster: refused the state in etcd (%s); forwarding revision %d", msg, c.h.Revision())})
}

// newest drains states queued behind st: applying only the newest of a
// burst of commits reaches the same maps sooner.
func newest(st state.State, states <-chan state.State) state.State {
	for {
		select {
		case n := <-states:
			st = n
		default:
			return st
		}
	}
}

// watchHealth marks etcd down or up as its client sees it, so that
// status and metrics show a lost store before a change is refused.
func (c *Node) watchHealth(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.store.Ping(sctx)
		cancel()
		c.noQuorum.Store(errors.Is(err, etcdstore.ErrNoQuorum))
		if err != nil && ctx.Err() == nil {
			c.down(err)
		} else if err == nil {
			c.up()
		}
	}
}

// Kick asks the publisher for a new node report.
func (c *Node) Kick() {
	select {
	case c.publish <- struct{}{}:
	default:
	}
}

// publisher publishes this node's report after each kick (coalesced).
func (c *Node) publisher(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.publish:
		}
		r, err := c.report()
		if err != nil {
			c.log.Warn("cluster: build node report", "err", err)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, storeTimeout)
		err = c.member.Publish(pctx, r)
		cancel()
		if err != nil && !errors.Is(err, ErrNoSession) {
			c.log.Debug("cluster: publish node report", "err", err)
		}
	}
}

// report is this node's applied revision, kernel ring digests and own
// health view.
func (c *Node) report() (Report, error) {
	st, err := c.h.Status()
	if err != nil {
		return Report{}, err
	}
	r := Report{Name: c.opts.Node, Addr: c.addr, AppliedRevision: st.Revision,
		RingSHA256: map[string]string{}, Health: map[string]map[string]string{}}
	for _, vs := range st.VIPs {
		r.RingSHA256[vs.VIP] = vs.RingSHA256
	}
	r.Health = localHealth(c.applied.Load())
	return r, nil
}

// onNodes applies again when another node's health view changed: the
// cluster's verdict may have moved.
func (c *Node) onNodes() {
	nodes := c.member.Nodes()
	c.mu.Lock()
	c.nodes = nodes
	c.mu.Unlock()
	c.h.Reapply("the cluster's health verdict")
	c.Kick()
}

func (c *Node) onCoordinator(elected bool) {
	reason := "cluster: this node is no longer the coordinator"
	if elected {
		reason = "cluster: this node is the coordinator"
		if c.OnElected != nil {
			go c.OnElected()
		}
	}
	c.event(api.Event{Kind: "ha", Reason: reason})
}

// RingRule is the cluster's verdict on backends, which builds the
// rings: the same on every node that saw the same node keys, as they
// stand now. With the local rule, or before any node published, each
// node's own verdict is its ring verdict.
func (c *Node) RingRule() view.RingRule {
	c.mu.Lock()
	nodes := c.nodes
	c.mu.Unlock()
	return quorumRule{quorum: c.opts.Quorum, nodes: nodes}
}

// quorumRule is a quorum over the node reports it was taken with.
type quorumRule struct {
	quorum Quorum
	nodes  []Report
}

// Ring is the ring verdict on backend addr of vip, local this node's.
func (r quorumRule) Ring(vip, addr string, local health.State) health.State {
	if r.quorum == Local || len(r.nodes) == 0 {
		return local
	}
	if r.quorum.Up(r.nodes, vip, addr) {
		return health.Up
	}
	return health.Down
}

// PeerAddrs are the other live nodes' addresses (flow sync's peers);
// known is false until the node list was read from etcd once.
func (c *Node) PeerAddrs() (addrs []netip.Addr, known bool) {
	for _, r := range c.member.Nodes() {
		if a, err := netip.ParseAddr(r.Addr); err == nil && r.Name != c.opts.Node {
			addrs = append(addrs, a)
		}
	}
	return addrs, c.member.Loaded()
}

// IsCoordinator says whether this node is the one elected in etcd.
func (c *Node) IsCoordinator() bool { return c.member.IsCoordinator() }

// Role is "coordinator" or "cluster".
func (c *Node) Role() string {
	if c.member.IsCoordinator() {
		return "coordinator"
	}
	return "cluster"
}

// Stop leaves the cluster at once (the node key's lease is revoked)
// and closes the etcd client; flow sync ends with the daemon's context.
func (c *Node) Stop() {
	c.member.Leave()
	c.cli.Close()
}
