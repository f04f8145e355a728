package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/availability"
	"github.com/sluicelb/sluice/control/bgp"
	"github.com/sluicelb/sluice/control/cluster"
	"github.com/sluicelb/sluice/control/events"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/hook"
	"github.com/sluicelb/sluice/control/neigh"
	"github.com/sluicelb/sluice/control/netif"
	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/probevia"
	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/sdnotify"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/loader/tcprobe"
)

// Defaults of the daemon.
const (
	DefaultStateDir    = "/var/lib/sluice"
	DefaultSocket      = "/run/sluice/sluice.sock"
	DefaultMetricsAddr = "127.0.0.1:9642"
	DefaultArchiveKeep = 100
)

// Coordinator decides whether this node may act on failover decisions. A
// single node always may; an LB pair or a fleet hands the role around.
type Coordinator interface {
	IsCoordinator() bool
	Role() string
}

// SingleNode is the coordinator of a lone daemon.
type SingleNode struct{}

// IsCoordinator implements Coordinator.
func (SingleNode) IsCoordinator() bool { return true }

// Role implements Coordinator.
func (SingleNode) Role() string { return "single" }

// Options configure the daemon.
type Options struct {
	Iface         string
	Mode          loader.Mode
	StateDir      string
	Socket        string
	MetricsAddr   string
	Seed          uint64
	ArchiveKeep   int
	FlowTableSize uint32
	// Timeline bounds the availability timeline (zero fields: defaults).
	Timeline state.TimelineLimits
	PinRoot  string
	Resolver neigh.MACResolver
	// NewFlowLimit caps new connection-table entries per CPU per second
	// (0: loader.DefaultNewFlowLimit; loader.NoNewFlowLimit: no cap).
	NewFlowLimit uint32
	// VIPOpen passes traffic for VIP addresses on ports no VIP serves to
	// this host's stack (by default it is dropped); VIPNoEcho drops ICMP
	// echo to them too.
	VIPOpen, VIPNoEcho bool
	// HookUser runs promotion and demotion commands as this user (name
	// or uid); empty runs them as the daemon.
	HookUser string
	Logger   *slog.Logger
	// HA, when set, makes this daemon one node of an active/standby pair.
	HA *pair.Options
	// Cluster, when set, makes it one active node of a cluster whose
	// desired state lives in etcd (StateDir keeps what is the node's own).
	Cluster *cluster.NodeOptions
	// BGP, when set, announces the VIP addresses this node can serve to
	// its routers (route health injection).
	BGP *bgp.Config
	// FlowSync, when set (cluster nodes only), shares the connection
	// table with the cluster's other nodes.
	FlowSync *flowsync.Options
	// ReweightInterval and ReweightThreshold bound ring rebuilds for
	// weight changes (agent checks, load metrics, slow start): at most one
	// per VIP per interval, for a move of at least the threshold (a
	// fraction). Zero: weight.DefaultInterval, weight.DefaultThreshold.
	ReweightInterval  time.Duration
	ReweightThreshold float64
}

// Daemon runs the data plane, health checks, reconciler, API and metrics.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	store   *state.BoltStore
	dp      *loader.Datapath
	rec     *reconcile.Reconciler
	hm      *health.Manager
	events  *events.Log
	metrics *metrics
	coord   Coordinator
	pair    *pair.Pair     // nil for a lone daemon
	cl      *cluster.Node  // nil unless in a cluster
	bgp     *bgp.Announcer // nil unless announcing over BGP
	flows   *flowsync.Syncer
	weights *weight.Engine
	via     *probevia.Dialer // probes through the data plane; nil until a check goes via a VIP
	probes  io.Closer        // tc_probe's attachments, with via
	started time.Time
	rev     atomic.Uint64 // d.state.Revision, readable without d.mu
	// lastProbe is when a health probe last finished (unix ns);
	// checkBound how long the watchdog lets pass without one.
	lastProbe  atomic.Int64
	checkBound atomic.Int64
	// checkRefs is every check's backends, for onHealth's fast path.
	checkRefs atomic.Pointer[map[health.ID][]reconcile.BackendRef]
	// applied is the view the last apply decided from.
	applied atomic.Pointer[view.View]

	mu    sync.Mutex // serialises changes and applies
	state state.State
	// etcdRev is the etcd revision of the cluster state last applied
	// (cluster nodes): a state from the watch at or below it is old.
	etcdRev uint64
	ctx     context.Context
	ready   bool

	availability map[availability.Subject]bool // last recorded availability
	lastApplied  time.Time                     // when the last change reached the maps
	lastCommit   time.Time                     // when the last change was committed

	hookUser *syscall.Credential

	promoMu       sync.Mutex
	promoting     map[state.VIPKey]bool   // a promotion runs for the VIP
	demotePending map[state.VIPKey]string // old primary awaiting its demote hook
}

// New opens the state, adopts or attaches the data plane and applies the
// committed state. Maps already right are not written.
func New(ctx context.Context, opts Options) (*Daemon, error) {
	if err := opts.complete(); err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: opts.Logger, events: events.New(1000), coord: SingleNode{}, started: time.Now(), ctx: ctx,
		promoting: map[state.VIPKey]bool{}, demotePending: map[state.VIPKey]string{}, availability: map[availability.Subject]bool{}}
	var err error
	if opts.HookUser != "" {
		if d.hookUser, err = hook.LookupUser(opts.HookUser); err != nil {
			return nil, fmt.Errorf("--hook-user: %w", err)
		}
	}
	if d.store, err = state.OpenBoltStore(opts.StateDir, opts.ArchiveKeep); err != nil {
		if errors.Is(err, state.ErrCorrupt) {
			return nil, fmt.Errorf("%w; with the daemon stopped, restore a backup with `sluice backup restore --state-dir %s FILE`, or the newest archived state with `--latest`", err, opts.StateDir)
		}
		return nil, err
	}
	d.store.SetTimelineLimits(opts.Timeline)
	if d.state, err = d.store.Load(); err != nil {
		d.store.Close()
		return nil, err
	}
	if err := d.joinCluster(ctx); err != nil {
		d.store.Close()
		return nil, err
	}
	d.rev.Store(d.state.Revision)
	if d.dp, err = loader.Load(ctx, loader.Options{Iface: opts.Iface, Mode: opts.Mode, PinRoot: opts.PinRoot,
		FlowTableSize: opts.FlowTableSize, Logger: d.log}); err != nil {
		d.store.Close()
		return nil, err
	}
	if err := d.setUp(ctx); err != nil {
		d.abort()
		return nil, err
	}
	if d.cl != nil {
		go d.cl.Run(ctx)
	}
	go d.checkPrimaries()
	return d, nil
}

// joinCluster connects to the cluster's etcd and takes its state, which
// the bbolt file then keeps as the last applied.
func (d *Daemon) joinCluster(ctx context.Context) error {
	if d.opts.Cluster == nil {
		return nil
	}
	var err error
	if d.cl, err = cluster.NewNode(clusterHost{d}, *d.opts.Cluster, netif.AddrText(d.opts.Iface)); err != nil {
		return err
	}
	st, fromEtcd, err := d.cl.Load(ctx, d.opts.Seed, d.state)
	if err != nil {
		d.cl.Close()
		return err
	}
	if !fromEtcd {
		return nil // etcd is away: forward from the last state applied
	}
	if st.Revision == 0 && len(d.state.VIPs) > 0 {
		// An empty cluster (a fresh etcd) does not wipe what this node
		// forwards: the first change or restore there replaces it.
		d.log.Warn("cluster: etcd holds no state for this cluster yet; forwarding the state applied here until the first change or restore",
			"cluster", d.opts.Cluster.Cluster, "vips", len(d.state.VIPs), "local_revision", d.state.Revision)
		return nil
	}
	if st, err = d.store.Replace(st); err != nil {
		d.cl.Close()
		return err
	}
	d.state, d.etcdRev = st, st.Revision
	return nil
}

// complete validates the options and fills in the defaults.
func (o *Options) complete() error {
	if o.Iface == "" {
		return errors.New("--iface: required (the interface to attach to)")
	}
	if ifi, err := net.InterfaceByName(o.Iface); err == nil && len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("--iface %s: not an Ethernet interface (no 6-byte MAC address to send frames from)", o.Iface)
	}
	if o.HA != nil {
		if err := o.HA.Validate(); err != nil {
			return err
		}
	}
	if o.HA != nil && o.Cluster != nil {
		return errors.New("--ha-peer: an LB pair and a cluster on etcd exclude each other (every cluster node is active)")
	}
	if o.FlowSync != nil && o.Cluster == nil {
		return errors.New("--flow-sync-key: needs --store etcd (flow sync's peers are the cluster's nodes)")
	}
	if o.BGP != nil {
		if o.HA != nil {
			return errors.New("--ha-peer: an LB pair and BGP announcements exclude each other (behind ECMP every node is active)")
		}
		if err := o.BGP.Complete(); err != nil {
			return err
		}
	}
	if o.ReweightInterval < 0 {
		return fmt.Errorf("--reweight-interval %v: must not be negative", o.ReweightInterval)
	}
	if o.ReweightThreshold < 0 || o.ReweightThreshold >= 1 {
		return fmt.Errorf("--reweight-threshold %g%%: want 0 to 99%%", 100*o.ReweightThreshold)
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	if o.ArchiveKeep == 0 {
		o.ArchiveKeep = DefaultArchiveKeep
	}
	if o.Resolver == nil {
		o.Resolver = neigh.NetlinkResolver{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// setUp configures the data plane, the pair, the reconciler, metrics and
// health checks, applies the committed state and starts the pair.
func (d *Daemon) setUp(ctx context.Context) error {
	opts := d.opts
	if _, err := d.dp.SetConfig(loader.Config{Seed: loader.HashSeed(opts.Seed), MAC: d.dp.Iface().HardwareAddr,
		FlowSync: opts.HA != nil || opts.FlowSync != nil, VIPOpen: opts.VIPOpen, NoEcho: opts.VIPNoEcho, NewFlowLimit: opts.NewFlowLimit}); err != nil {
		return err
	}
	var err error
	if opts.HA != nil {
		ho := *opts.HA
		if ho.Boot, err = state.NextBoot(opts.StateDir, time.Now()); err != nil {
			return err
		}
		if opts.FlowTableSize > 0 {
			ho.MaxFlows = 2 * int(opts.FlowTableSize) // both families
		}
		if d.pair, err = pair.New(ho, pairHost{d}, pairDatapath{d.dp}, d.log); err != nil {
			return err
		}
		d.pair.OnEvent, d.pair.OnMaster = d.events.Add, d.checkPrimaries
		d.coord = d.pair
	}
	if d.rec, err = reconcile.New(d.dp, opts.Resolver, opts.Seed, d.onMACResolved); err != nil {
		return err
	}
	if d.cl != nil {
		d.coord = d.cl
	}
	d.metrics = newMetrics(d)
	if d.pair != nil {
		d.metrics.reg.MustRegister(d.pair.Collectors()...)
	}
	if d.cl != nil {
		d.metrics.reg.MustRegister(d.cl)
	}
	if opts.FlowSync != nil {
		if err := d.startFlowSync(ctx); err != nil {
			return err
		}
	}
	d.hm = &health.Manager{OnEvent: d.onHealth, OnResult: func(r health.Result) {
		d.lastProbe.Store(time.Now().UnixNano())
		d.metrics.observeProbe(r)
	}}
	d.newWeights()
	go d.weights.Run(ctx)
	d.mu.Lock()
	d.syncChecksLocked()
	res, err := d.applyLocked(ctx)
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("apply committed state: %w", err)
	}
	d.log.Info("daemon started", "iface", opts.Iface, "revision", d.state.Revision, "adopted", d.dp.Adopted(), "map_writes", res.Writes)
	d.events.Add(api.Event{Kind: "config", Reason: fmt.Sprintf("daemon started (adopted=%v, map writes=%d)", d.dp.Adopted(), res.Writes), Revision: d.state.Revision})
	d.ready = true
	if d.pair != nil {
		if err := d.pair.Start(ctx); err != nil {
			return fmt.Errorf("start ha: %w", err)
		}
	}
	if opts.BGP != nil {
		a, err := newAnnouncer(ctx, d, *opts.BGP)
		if err != nil {
			return err
		}
		d.mu.Lock() // health verdicts already apply, and kick it
		d.bgp = a
		d.mu.Unlock()
		d.metrics.reg.MustRegister(a)
		go a.Run(ctx)
	}
	return nil
}

// abort releases what a failed New set up.
func (d *Daemon) abort() {
	if d.bgp != nil {
		d.bgp.Speaker.Stop()
	}
	if d.hm != nil {
		d.hm.Stop()
	}
	if d.pair != nil {
		d.pair.Close()
	}
	if d.flows != nil {
		d.flows.Close()
	}
	if d.cl != nil {
		d.cl.Close()
	}
	if d.dp.Adopted() {
		d.dp.Close() // a data plane that was forwarding before keeps forwarding
	} else {
		d.dp.Detach() // nothing half-done stays attached
	}
	d.store.Close()
}

// onMACResolved applies again once a backend's next-hop MAC resolution
// finished (or failed), off the goroutine that resolved it.
func (d *Daemon) onMACResolved() { d.apply("resolved next-hop macs") }

// apply applies the committed state again, for what changed (logged if
// it fails).
func (d *Daemon) apply(what string) reconcile.Result {
	d.mu.Lock()
	res, err := d.applyLocked(d.ctx)
	d.mu.Unlock()
	if err != nil {
		d.log.Error("apply "+what, "err", err)
	}
	return res
}

// applyLocked makes the data plane match the committed state under the
// current health view, then lets the pair re-check its sync and records
// availability. Every apply goes through here; d.mu is held.
func (d *Daemon) applyLocked(ctx context.Context) (reconcile.Result, error) {
	v := d.look(d.state)
	res, err := d.rec.Apply(ctx, v)
	d.applied.Store(v)
	if d.pair != nil {
		d.pair.Invalidate()
	}
	if d.cl != nil {
		d.cl.Kick() // publish the applied revision and rings
	}
	if d.bgp != nil {
		d.bgp.Kick()
	}
	if err != nil {
		return res, err
	}
	d.recordAvailabilityLocked()
	return res, nil
}

// look builds the view of s under the current verdicts: health checks,
// weights and, in a cluster, the quorum.
func (d *Daemon) look(s state.State) *view.View {
	src := view.Sources{Health: d.hm, Weights: d.weights}
	if d.cl != nil {
		src.Ring, src.Shared = d.cl.RingRule(), true
	}
	return view.Build(s, src)
}

func (d *Daemon) syncChecksLocked() {
	var checks []health.Check
	initial := map[health.ID]health.State{}
	// The backend table is read once, and only when a check is new: its
	// initial state is all the table gives (a read takes milliseconds).
	var adopted func(state.VIPKey, netip.Addr) (health.State, bool)
	refs := map[health.ID][]reconcile.BackendRef{}
	var known map[health.ID][]reconcile.BackendRef // the checks already running
	if p := d.checkRefs.Load(); p != nil {
		known = *p
	}
	for _, v := range d.state.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		for _, b := range v.Backends {
			c := health.For(k, b)
			if c.Probe.Via.IsValid() {
				c.Probe.Dial = d.probeDialerLocked().Dial(c.Probe.Via)
			}
			checks = append(checks, c)
			refs[c.ID()] = append(refs[c.ID()], reconcile.BackendRef{VIP: k, Addr: netip.MustParseAddr(b.Addr)})
			d.metrics.checkFailures.WithLabelValues(v.VIP, b.Addr) // export 0 before the first failure
			if _, ok := known[c.ID()]; ok {
				continue
			}
			if adopted == nil {
				adopted = d.rec.AdoptedHealth()
			}
			if st, ok := adopted(k, netip.MustParseAddr(b.Addr)); ok {
				if cur, seen := initial[c.ID()]; !seen || cur == health.Down {
					initial[c.ID()] = st
				}
			}
		}
	}
	var bound time.Duration
	for _, c := range checks {
		if c.Probe.Type != health.None {
			bound = max(bound, 3*c.Settings.Interval+c.Settings.Timeout)
		}
	}
	d.checkBound.Store(int64(bound))
	d.checkRefs.Store(&refs)
	d.hm.Sync(d.ctx, checks, initial)
	d.weights.Sync(d.ctx, weight.Specs(d.state, nil))
}

// probeDialerLocked attaches tc_probe the first time a check goes via a
// VIP; if it cannot, such checks fail with the reason.
func (d *Daemon) probeDialerLocked() *probevia.Dialer {
	if d.via == nil {
		d.via = &probevia.Dialer{Backends: d.rec, Iface: d.dp.Iface(), Log: d.log}
		if d.probes, d.via.Attached = tcprobe.Attach(d.dp.ProbeProgram(), d.dp.Iface()); d.via.Attached != nil {
			d.log.Error("checks via vip cannot run", "err", d.via.Attached)
		}
	}
	return d.via
}

// onHealth applies a health verdict at once and times verdict -> maps.
func (d *Daemon) onHealth(e health.Event) {
	refs := (*d.checkRefs.Load())[e.Check]
	var out time.Time // a verdict of down does not wait for an apply in progress
	if e.To == health.Down {
		out, _ = d.rec.Out(refs)
	}
	d.mu.Lock()
	res, err := d.applyLocked(d.ctx)
	applied := res.Done
	marked := res.FirstWrite
	if !out.IsZero() {
		marked = out
	}
	if marked.IsZero() {
		marked = applied
	}
	d.mu.Unlock()
	d.metrics.failoverApply.Observe(applied.Sub(e.Time).Seconds())
	if err != nil {
		d.log.Error("apply health verdict", "err", err)
	}
	for _, ref := range refs {
		vip, addr := state.FormatVIPKey(ref.VIP), ref.Addr.String()
		d.metrics.transition(vip, addr, string(e.To))
		d.events.Add(api.Event{Time: e.Time, Kind: "health", VIP: vip, Backend: addr, From: string(e.From), To: string(e.To),
			Reason: e.Reason, Marked: &marked, Applied: &applied})
	}
	d.log.Info("health transition", "target", e.Check.Probe.Addr, "from", e.From, "to", e.To, "reason", e.Reason,
		"marked", marked.Sub(e.Time), "applied", applied.Sub(e.Time))
	if d.cl != nil {
		d.cl.Kick() // the cluster's verdict counts this node's view
	}
	d.checkPrimaries()
}

// Change commits a change to the desired state and applies it; failover
// VIPs that now lack a primary get one.
func (d *Daemon) Change(ctx context.Context, what string, change func(*state.State) error) (state.State, error) {
	st, err := d.change(ctx, what, change)
	if err == nil {
		go d.checkPrimaries()
	}
	return st, err
}

// ErrNotMaster refuses changes on the backup of an LB pair.
var ErrNotMaster = errors.New("this node is the backup of an LB pair: make changes on the master (see `sluice ha status`)")

// mayCoordinate refuses promotions and drills on a pair's backup and on
// a cluster node that is not the coordinator: they must happen once.
func (d *Daemon) mayCoordinate() error {
	if d.cl != nil && !d.cl.IsCoordinator() {
		return state.Conflict("%v: promotions and drills run on the coordinator (see `sluice cluster status`)", cluster.ErrNotCoordinator)
	}
	return d.mayChange()
}

// mayChange refuses changes, promotions and drills on a pair's backup.
func (d *Daemon) mayChange() error {
	if d.pair != nil && !d.pair.IsCoordinator() {
		return ErrNotMaster
	}
	return nil
}

// coordinatorChange is Change for what only the coordinator records (a
// promotion): in a cluster, its transaction also requires that this node
// still holds the election.
func (d *Daemon) coordinatorChange(ctx context.Context, what string, change func(*state.State) error) (state.State, error) {
	commit := d.commit
	if d.cl != nil {
		commit = d.cl.CommitFenced
	}
	st, err := d.changeWith(ctx, what, commit, change)
	if err == nil {
		go d.checkPrimaries()
	}
	return st, err
}

func (d *Daemon) change(ctx context.Context, what string, change func(*state.State) error) (state.State, error) {
	return d.changeWith(ctx, what, d.commit, change)
}

// commitFunc writes a change where the desired state lives.
type commitFunc func(context.Context, func(*state.State) error) (state.State, error)

// changeWith commits a change with commit and applies it, under d.mu.
func (d *Daemon) changeWith(ctx context.Context, what string, commit commitFunc, change func(*state.State) error) (state.State, error) {
	if err := d.mayChange(); err != nil {
		return state.State{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := d.state.Revision
	st, err := commit(ctx, change)
	if err != nil {
		return state.State{}, err
	}
	d.lastCommit = time.Now()
	d.state, d.etcdRev = st, st.Revision
	d.rev.Store(st.Revision)
	if st.Revision == prev {
		return st, nil
	}
	if d.pair != nil {
		d.pair.Committed()
	}
	d.syncChecksLocked()
	res, err := d.applyLocked(ctx)
	if err != nil {
		return st, fmt.Errorf("revision %d committed, but applying it failed: %w", st.Revision, err)
	}
	d.lastApplied = res.Done
	d.events.Add(api.Event{Kind: "config", Reason: what, Revision: st.Revision})
	return st, nil
}

// commit writes a change where the desired state lives: etcd for a
// cluster node, else the bbolt file.
func (d *Daemon) commit(ctx context.Context, change func(*state.State) error) (state.State, error) {
	if d.cl != nil {
		return d.cl.Commit(ctx, change)
	}
	return d.store.Commit(change)
}

// applyReplica stores and applies a state the master of the pair, or
// the cluster's etcd, committed, with its revision.
func (d *Daemon) applyReplica(next state.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if next.Revision == d.state.Revision && state.Equal(next, d.state) {
		return nil
	}
	if d.cl != nil && next.Revision <= d.etcdRev {
		// A cluster's revisions only grow: this node's own commit (or a
		// newer state) got here first, and it holds this one's changes.
		return nil
	}
	prev := d.state.Revision
	st, err := d.store.Replace(next)
	if err != nil {
		return err
	}
	d.state, d.etcdRev = st, st.Revision
	d.rev.Store(st.Revision)
	d.lastCommit = time.Now()
	d.syncChecksLocked()
	res, err := d.applyLocked(d.ctx)
	if err != nil {
		return fmt.Errorf("revision %d replicated, but applying it failed: %w", st.Revision, err)
	}
	d.lastApplied = res.Done
	d.events.Add(api.Event{Kind: "config", Reason: fmt.Sprintf("replicated from the master (revision %d, was %d)", st.Revision, prev), Revision: st.Revision})
	return nil
}

func (d *Daemon) revision() uint64 { return d.rev.Load() }

// State returns the committed desired state.
func (d *Daemon) State() state.State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state.Clone()
}

// Run serves the API and metrics until ctx ends, then stops health checks
// and releases the data plane, which keeps forwarding (it stays pinned).
func (d *Daemon) Run(ctx context.Context) error {
	api, err := d.listenAPI()
	if err != nil {
		d.shutdown()
		return err
	}
	srv := &http.Server{Handler: d.apiHandler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(api) }()
	var msrv *http.Server
	if d.opts.MetricsAddr != "" {
		ml, err := net.Listen("tcp", d.opts.MetricsAddr)
		if err != nil {
			srv.Close()
			d.shutdown()
			return fmt.Errorf("--metrics-addr %s: %w", d.opts.MetricsAddr, err)
		}
		msrv = &http.Server{Handler: d.metrics.handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.Serve(ml) }()
	}
	sdnotify.Ready(ctx, d.healthy, d.log)
	refresh := time.NewTicker(30 * time.Second)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			sdnotify.Stopping()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			if msrv != nil {
				msrv.Shutdown(sctx)
			}
			d.shutdown()
			return nil
		case err := <-errc:
			if !errors.Is(err, http.ErrServerClosed) {
				d.shutdown()
				return err
			}
		case <-refresh.C:
			if d.rec.RefreshMACs(ctx) {
				d.apply("refreshed next-hop macs")
			}
		}
	}
}

func (d *Daemon) shutdown() {
	if d.pair != nil {
		d.pair.Stop()
	}
	if d.bgp != nil {
		d.drainForShutdown(d.opts.BGP.Drain)
	}
	d.hm.Stop()
	if d.probes != nil {
		d.probes.Close()
	}
	if d.cl != nil {
		d.cl.Close()
	}
	if d.bgp != nil {
		// Behind ECMP the routers no longer send here: nothing to keep
		// forwarding across a restart, and a stale program must not stay.
		if err := d.dp.Detach(); err != nil {
			d.log.Error("detach the data plane", "err", err)
		}
	} else {
		d.dp.Close()
	}
	d.store.Close()
	os.Remove(d.opts.Socket)
}

func (d *Daemon) listenAPI() (net.Listener, error) {
	l, err := api.Listen(d.opts.Socket)
	if err != nil {
		return nil, fmt.Errorf("--socket %s: %w", d.opts.Socket, err)
	}
	return l, nil
}

// recordAvailabilityLocked appends to the persisted timeline every backend
// and VIP whose availability changed with the last apply. A VIP is
// available while it has min_active usable backends, or (failover) a
// usable primary.
func (d *Daemon) recordAvailabilityLocked() {
	now := time.Now()
	var evs []state.TimelineEvent
	seen := map[availability.Subject]bool{}
	note := func(k availability.Subject, avail bool) {
		seen[k] = true
		if old, ok := d.availability[k]; ok && old == avail {
			return
		}
		d.availability[k] = avail
		evs = append(evs, state.TimelineEvent{Time: now, VIP: k.VIP, Backend: k.Backend, Available: avail})
	}
	for _, v := range d.state.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		view, _, _ := d.rec.View(k)
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
	for k := range d.availability {
		if !seen[k] {
			delete(d.availability, k) // removed from the state: its timeline just ends
		}
	}
	if err := d.store.AppendTimeline(evs); err != nil {
		d.log.Error("record availability", "err", err)
	}
}

// Availability reports measured and modelled availability.
func (d *Daemon) Availability() (api.AvailabilityReport, error) {
	tl, err := d.store.Timeline()
	if err != nil {
		return api.AvailabilityReport{}, err
	}
	return availability.Build(d.State(), tl, time.Now()), nil
}
