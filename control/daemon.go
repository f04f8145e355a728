package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/apiserver"
	"github.com/sluicelb/sluice/control/availability"
	"github.com/sluicelb/sluice/control/bgp"
	"github.com/sluicelb/sluice/control/cluster"
	"github.com/sluicelb/sluice/control/events"
	"github.com/sluicelb/sluice/control/failover"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/hook"
	"github.com/sluicelb/sluice/control/metrics"
	"github.com/sluicelb/sluice/control/neigh"
	"github.com/sluicelb/sluice/control/netif"
	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/sdnotify"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
)

// Defaults of the daemon.
const (
	DefaultStateDir    = "/var/lib/sluice"
	DefaultSocket      = "/run/sluice/sluice.sock"
	DefaultMetricsAddr = "127.0.0.1:9642"
	DefaultArchiveKeep = 100
)

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
	// Datapath, when set, is the data plane to drive instead of loading
	// and attaching the kernel's on Iface (tests: an in-memory one).
	Datapath Datapath
}

// Datapath is the data plane as the daemon drives it (loader.Datapath).
type Datapath interface {
	reconcile.Maps
	flowsync.Datapath
	SetConfig(loader.Config) (bool, error)
	Iface() *net.Interface
	Attached() bool // the interface runs this data plane's program
	Adopted() bool
	ProbeProgram() *ebpf.Program
	FlowEvents() (*loader.FlowEventReader, error)
	Stats() (map[loader.Stat]loader.Counter, error)
	VIPCounter(id uint32) (loader.Counter, error)
	BackendCounter(idx uint32) (loader.Counter, error)
	FlowCount() (int, error)
	Close() error
	Detach() error
}

// Daemon runs the data plane, health checks, reconciler, API and metrics.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	ctx     context.Context
	core    *core
	topo    topology
	routes  routes
	fo      *failover.Manager
	checks  *checks
	events  *events.Log
	metrics *metrics.Metrics
	dp      Datapath
	started time.Time
	ready   atomic.Bool
	// hookCred runs promotion hooks as --hook-user (nil: as the daemon).
	hookCred *syscall.Credential
	// lastProbe is when a health probe last finished (unix ns).
	lastProbe atomic.Int64
}

// New opens the state, adopts or attaches the data plane and applies the
// committed state. Maps already right are not written.
func New(ctx context.Context, opts Options) (*Daemon, error) {
	if err := opts.complete(); err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: opts.Logger, ctx: ctx, events: events.New(1000), started: time.Now(), routes: noRoutes{}}
	var err error
	if d.hookCred, err = hookUser(opts.HookUser); err != nil {
		return nil, err
	}
	c, err := d.openCore()
	if err != nil {
		return nil, err
	}
	if err := d.join(ctx, c); err != nil {
		c.store.Close()
		return nil, err
	}
	if d.dp, err = d.loadDatapath(ctx); err != nil {
		d.topo.Close()
		c.store.Close()
		return nil, err
	}
	c.dp = d.dp
	if err := d.setUp(ctx); err != nil {
		d.abort()
		return nil, err
	}
	if err := d.start(ctx); err != nil {
		d.abort()
		return nil, err
	}
	return d, nil
}

// openCore opens the bbolt store and reads the state applied here last.
func (d *Daemon) openCore() (*core, error) {
	store, err := state.OpenBoltStore(d.opts.StateDir, d.opts.ArchiveKeep)
	if err != nil {
		if errors.Is(err, state.ErrCorrupt) {
			return nil, fmt.Errorf("%w; with the daemon stopped, restore a backup with `sluice backup restore --state-dir %s FILE`, or the newest archived state with `--latest`", err, d.opts.StateDir)
		}
		return nil, err
	}
	store.SetTimelineLimits(d.opts.Timeline)
	st, err := store.Load()
	if err != nil {
		store.Close()
		return nil, err
	}
	c := &core{log: d.log, store: store, events: d.events, iface: d.opts.Iface, started: d.started, ctx: d.ctx,
		availability: map[availability.Subject]bool{}, kick: func() {}, changed: func(*view.View) {}}
	c.setState(st, st.Revision)
	d.core = c
	return c, nil
}

// join makes the node's topology and takes the state it starts from: a
// cluster's comes from etcd before the data plane is loaded (a refused
// seed touches nothing); a pair, which needs the interface, is made with
// the data plane (setUp).
func (d *Daemon) join(ctx context.Context, c *core) error {
	d.topo = single{store: c.store, rev: c.Revision}
	if d.opts.Cluster != nil {
		o := *d.opts.Cluster
		o.Seed = d.opts.Seed
		cl, err := cluster.NewNode(c, o, netif.AddrText(d.opts.Iface), d.log)
		if err != nil {
			return err
		}
		cl.OnEvent, cl.OnElected, cl.OnCopied = d.events.Add, func() { d.fo.Check() }, c.kickRoutes
		if err := d.syncFlows(cl, c); err != nil {
			cl.Close()
			return err
		}
		d.topo = cl
	}
	c.topo = d.topo
	st, have, err := d.topo.Load(ctx, c.state)
	if err != nil {
		d.topo.Close()
		return err
	}
	c.setState(st, have)
	return nil
}

// syncFlows shares the connection table with a cluster's other nodes
// (--flow-sync-key); the core hands flow sync the data plane once it is
// loaded.
func (d *Daemon) syncFlows(cl *cluster.Node, c *core) error {
	if d.opts.FlowSync == nil {
		return nil
	}
	o := *d.opts.FlowSync
	var err error
	if o.Boot, err = state.NextBoot(d.opts.StateDir, time.Now()); err != nil {
		return err
	}
	if o.Local = netif.Addr(d.opts.Iface); !o.Local.IsValid() {
		return fmt.Errorf("--flow-sync-key: %s has no IP address to listen on", d.opts.Iface)
	}
	if d.opts.FlowTableSize > 0 {
		o.MaxFlows = 2 * int(d.opts.FlowTableSize) // both families
	}
	return cl.SyncFlows(o, c, c, c)
}

func (d *Daemon) loadDatapath(ctx context.Context) (Datapath, error) {
	if d.opts.Datapath != nil {
		return d.opts.Datapath, nil
	}
	return loader.Load(ctx, loader.Options{Iface: d.opts.Iface, Mode: d.opts.Mode, PinRoot: d.opts.PinRoot,
		FlowTableSize: d.opts.FlowTableSize, Logger: d.log})
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
	o.fill()
	return nil
}

func (o *Options) fill() {
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
}

// abort releases what a failed New set up.
func (d *Daemon) abort() {
	if d.checks != nil {
		d.checks.stop()
	}
	d.topo.Close()
	if d.dp.Adopted() {
		d.dp.Close() // a data plane that was forwarding before keeps forwarding
	} else {
		d.dp.Detach() // nothing half-done stays attached
	}
	d.core.store.Close()
}

// Run serves the API and metrics until ctx ends, then stops health checks
// and releases the data plane, which keeps forwarding (it stays pinned).
func (d *Daemon) Run(ctx context.Context) error {
	l, err := api.Listen(d.opts.Socket)
	if err != nil {
		d.shutdown()
		return fmt.Errorf("--socket %s: %w", d.opts.Socket, err)
	}
	srv := &http.Server{Handler: d.apiHandler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(l) }()
	var msrv *http.Server
	if d.opts.MetricsAddr != "" {
		ml, err := net.Listen("tcp", d.opts.MetricsAddr)
		if err != nil {
			srv.Close()
			d.shutdown()
			return fmt.Errorf("--metrics-addr %s: %w", d.opts.MetricsAddr, err)
		}
		msrv = &http.Server{Handler: d.metrics.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.Serve(ml) }()
	}
	sdnotify.Ready(ctx, d.healthy, d.log)
	refresh := time.NewTicker(30 * time.Second)
	defer refresh.Stop()
	keep := time.NewTicker(time.Second)
	defer keep.Stop()
	for {
		select {
		case <-ctx.Done():
			sdnotify.Stopping(d.stopBound())
			sctx, cancel := context.WithTimeout(context.Background(), apiStopTimeout)
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
		case <-keep.C:
			d.core.KeepPending() // a state a full disk could not keep
		case <-refresh.C:
			if d.core.rec.RefreshMACs(ctx) {
				d.core.Reapply("refreshed next-hop macs")
			}
		}
	}
}

// How long each step of a stop may take (stopBound adds them up).
const (
	apiStopTimeout = 2 * time.Second // requests in flight finish
	// topologyStopBound: a cluster's last flow batch (3 s) and lease
	// revocation (1 s); a pair's handover.
	topologyStopBound = 5 * time.Second
	releaseBound      = time.Second // checks, the data plane, the store
)

// stopBound is the longest a stop takes, told to systemd when it starts:
// the API's requests, the routes' withdrawal and drain, the topology,
// and the rest.
func (d *Daemon) stopBound() time.Duration {
	return apiStopTimeout + d.routes.WithdrawBound() + topologyStopBound + releaseBound
}

// apiHandler is the API on the unix socket.
func (d *Daemon) apiHandler() http.Handler {
	s := &apiserver.Server{Ctx: d.ctx, Core: d.core, Topology: d.topo, Routes: d.routes, Failover: d.fo, Events: d.events}
	return s.Handler()
}

// shutdown hands over what others must take (a pair's master role, the
// routes), stops the checks and releases the data plane.
func (d *Daemon) shutdown() {
	d.routes.Withdraw()
	d.topo.Stop()
	d.checks.stop()
	d.fo.Stop() // no promotion commits after the store closes
	if err := d.routes.Release(d.dp); err != nil {
		d.log.Error("release the data plane", "err", err)
	}
	d.core.store.Close()
	os.Remove(d.opts.Socket)
}

// hookUser resolves --hook-user (nil: hooks run as the daemon).
func hookUser(name string) (*syscall.Credential, error) {
	if name == "" {
		return nil, nil
	}
	cred, err := hook.LookupUser(name)
	if err != nil {
		return nil, fmt.Errorf("--hook-user: %w", err)
	}
	return cred, nil
}

// probed notes a finished probe for the watchdog and the metrics.
func (d *Daemon) probed(r health.Result) {
	d.lastProbe.Store(time.Now().UnixNano())
	var backends [][2]string
	if r.Err != nil {
		for _, ref := range d.checks.of(r.Check) {
			backends = append(backends, [2]string{ref.VIP.String(), ref.Addr.String()})
		}
	}
	d.metrics.Probed(r, backends)
}
