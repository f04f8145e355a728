// Package pair runs one node of an active/standby LB pair on top of the
// advert protocol in control/ha: VIP addresses on the master (with
// gratuitous ARP and unsolicited NA), state replication from the master,
// connection-table sync, and the pair's status and metrics. It reaches the
// daemon only through the Host interface.
package pair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/peer"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

// Options configure an active/standby pair (sluice daemon --ha-*).
type Options struct {
	Peers    []netip.AddrPort
	Priority uint8
	Advert   time.Duration
	Preempt  bool
	Key      []byte
	// Node names this node in adverts; the default is the interface's
	// first address, which differs between the two nodes.
	Node string
	// Port carries adverts (UDP) and sync (TCP); default ha.DefaultPort.
	Port uint16
	// MaxFlows bounds the connection-table entries a whole-table copy
	// from the master may carry (both families); default
	// 2 × loader.DefaultFlowTableSize.
	MaxFlows int
	// Boot identifies this start of the node in adverts and sync
	// requests; it must grow with every start (state.NextBoot keeps it in
	// the state directory), so that peers' replay guards accept it.
	Boot uint64
	// Store is where this node commits its changes as master (its bbolt
	// file).
	Store Store
}

// Store is the bbolt store a node commits to.
type Store interface {
	Commit(change func(*state.State) error) (state.State, error)
}

// Defaults of an LB pair.
const (
	DefaultAdvert   = 100 * time.Millisecond
	DefaultPriority = 100
	minKey          = 16
	syncTimeout     = time.Second
	// dumpTimeout bounds the copy of a whole connection table (two
	// families of up to millions of entries, 55 bytes each at most).
	dumpTimeout = time.Minute
)

func (o *Options) Validate() error {
	if len(o.Peers) == 0 {
		return errors.New("--ha-peer: at least one peer address is required")
	}
	if o.Priority == 0 {
		return errors.New("--ha-priority: 1 to 255 (0 is reserved for stepping down)")
	}
	if o.Advert < 10*time.Millisecond || o.Advert > 10*time.Second {
		return fmt.Errorf("--ha-advert %v: 10ms to 10s", o.Advert)
	}
	if len(o.Key) < minKey {
		return fmt.Errorf("--ha-key-file: the key has %d bytes, want at least %d", len(o.Key), minKey)
	}
	if o.Port == 0 {
		o.Port = ha.DefaultPort
	}
	return nil
}

// ReadKey reads a pair's shared key; surrounding white space is ignored.
// The file must be root's and readable by nobody else (mode 0400 or
// 0600): anyone who reads the key can take over the pair.
func ReadKey(path string) ([]byte, error) { return ReadKeyFlag("--ha-key-file", path) }

// ReadKeyFlag is ReadKey for the key of flag (its errors name the flag):
// the cluster's flow-sync key is held to the same rules.
func ReadKeyFlag(flag, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	if err := keyFileSafe(path, fi); err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("%s %s: more than %d bytes: not a key", flag, path, maxKeyFile)
	}
	b = bytes.TrimSpace(b)
	if len(b) < minKey {
		return nil, fmt.Errorf("%s %s: %d bytes, want at least %d", flag, path, len(b), minKey)
	}
	return b, nil
}

// maxKeyFile bounds what ReadKey reads.
const maxKeyFile = 4096

// keyFileSafe refuses a key file that is not a regular file, not owned by
// root, or readable or writable by group or others.
func keyFileSafe(path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (mode %v)", fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("mode %04o: group or others may read it; make it 0400 (chmod 0400 %s)", perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
		return fmt.Errorf("owned by uid %d, not root (chown root:root %s)", st.Uid, path)
	}
	return nil
}

// Host is what the pair needs of the daemon it runs in. The daemon
// implements it; a test can give a pair a host of its own.
type Host interface {
	// State is the committed desired state.
	State() state.State
	// Revision is the committed revision, readable at any time without
	// waiting for a change in progress.
	Revision() uint64
	// ApplyReplica stores and applies a state the master committed, with
	// its revision.
	ApplyReplica(state.State) error
	// UsableView lists "VIP backend" for every backend the data plane may
	// use, sorted: a backup pre-empts only with the master's view.
	UsableView() []string
	// FlowBackend is the local index of backend addr of the VIP a client
	// flow to dst belongs to, if both exist here.
	FlowBackend(dst netip.AddrPort, proto loader.Proto, addr netip.Addr) (uint32, bool)
	// BackendAddrs maps every backend index in use to its address.
	BackendAddrs() map[uint32]netip.Addr
}

// Datapath is the part of the data plane the pair reads and writes: the
// interface, and the connection table it syncs.
type Datapath interface {
	flowsync.Datapath
	Iface() *net.Interface
	FlowEvents() (FlowReader, error)
}

// FlowReader yields the data plane's connection-table writes, as
// flowsync's Batches reads them.
type FlowReader = flowsync.FlowReader

// Pair runs this daemon's side of an LB pair: adverts and roles, VIP
// addresses, state replication and flow sync. It is the daemon's
// topology: only the master changes the state and promotes replicas.
type Pair struct {
	// OnEvent receives the pair's events (role changes, sync, revision
	// mismatches); OnMaster is called, on a goroutine of its own, when
	// this node becomes master. Set both before Start; either may be nil.
	OnEvent  func(api.Event)
	OnMaster func()

	host   Host
	dp     Datapath
	opts   Options
	log    *slog.Logger
	node   *ha.Node
	udp    *ha.UDP
	tcp    []net.Listener // the sync listeners, one per address facing a peer
	signer *peer.Signer
	srv    *peer.Server
	client *http.Client // state pushes and pulls, flow batches
	bulk   *http.Client // whole-table copies
	flows  *flowsync.Link
	owner  *vipOwner
	peers  map[string]netip.AddrPort // by ha.PeerKey
	ctx    context.Context

	pushq     chan struct{} // a committed revision to push (coalesced)
	pulling   atomic.Bool
	lastPull  atomic.Int64 // unix ns
	flowsDone atomic.Bool  // a full flow table was received since becoming backup
	synced    atomic.Bool  // state, flows and health match the master: may pre-empt

	// roleMu orders VIP-address changes: a role change and a commit's
	// address update never interleave, so a backup never keeps an address.
	roleMu sync.Mutex

	mu           sync.Mutex
	masterUsable []string             // the master's usable backends at the last pull
	mismatch     map[string]time.Time // peer -> since when its revision differs
	reported     map[string]bool      // mismatch event sent

	syncRefused *prometheus.CounterVec
}

var (
	descHARole     = prometheus.NewDesc("sluice_ha_role", "1 for the node's current role in the LB pair.", []string{"role"}, nil)
	descHATrans    = prometheus.NewDesc("sluice_ha_transitions_total", "Role changes, by new role.", []string{"to"}, nil)
	descHAPeerUp   = prometheus.NewDesc("sluice_ha_peer_up", "1 while adverts arrive from the peer.", []string{"peer"}, nil)
	descHAAge      = prometheus.NewDesc("sluice_ha_advert_age_seconds", "Time since the peer's last valid advert.", []string{"peer"}, nil)
	descHABad      = prometheus.NewDesc("sluice_ha_bad_adverts_total", "Refused adverts, by reason.", []string{"reason"}, nil)
	descHADual     = prometheus.NewDesc("sluice_ha_dual_master", "1 while this master hears another master.", nil, nil)
	descHAMismatch = prometheus.NewDesc("sluice_ha_revision_mismatch", "1 while the peer's state revision differs from ours for more than two master-down intervals.", []string{"peer"}, nil)
	descHAPeerRev  = prometheus.NewDesc("sluice_ha_peer_revision", "The peer's state revision, from its adverts.", []string{"peer"}, nil)
)

// New sets up the pair on dp's interface and opens its sockets; Start
// runs it. opts must have passed Validate. log may be nil.
func New(opts Options, host Host, dp Datapath, log *slog.Logger) (*Pair, error) {
	if log == nil {
		log = slog.Default()
	}
	if opts.Node == "" {
		opts.Node = defaultNodeName(dp.Iface())
	}
	if opts.Boot == 0 {
		return nil, errors.New("ha: no boot counter (Options.Boot)")
	}
	boot := opts.Boot
	p := &Pair{host: host, dp: dp, opts: opts, log: log.With("component", "ha"), owner: newVIPOwner(dp.Iface(), log),
		signer: &peer.Signer{Key: opts.Key, Node: opts.Node, Boot: boot},
		client: &http.Client{Timeout: syncTimeout}, bulk: &http.Client{Timeout: dumpTimeout}, peers: map[string]netip.AddrPort{}, pushq: make(chan struct{}, 1),
		mismatch: map[string]time.Time{}, reported: map[string]bool{}}
	p.srv = &peer.Server{Key: opts.Key, Verifier: &peer.Verifier{Key: opts.Key}, Limit: maxRequest, Refused: p.refuseSync}
	p.flows = flowsync.NewLink(flowsync.LinkOptions{Host: host, Datapath: dp, Log: p.log, Signer: p.signer, Key: opts.Key,
		Path: "/ha/", MaxFlows: opts.MaxFlows, Client: p.client, Bulk: p.bulk})
	for _, a := range opts.Peers {
		p.peers[ha.PeerKey(a.Addr())] = a
	}
	var err error
	if p.udp, err = ha.ListenUDP(opts.Port, opts.Peers); err != nil {
		return nil, err
	}
	if p.tcp, err = p.listenSync(); err != nil {
		p.udp.Close()
		return nil, err
	}
	fsm := ha.NewFSM(opts.Node, opts.Priority, opts.Advert, opts.Preempt, time.Now())
	p.node = ha.NewNode(fsm, opts.Key, boot, p.udp, host.Revision)
	// The first sync listener is on our address that faces the peers.
	p.node.Self = ha.PeerKey(p.tcp[0].Addr().(*net.TCPAddr).AddrPort().Addr())
	p.node.OnRole = p.onRole
	p.node.OnOutranked = func() { p.owner.reannounce(p.ctx) }
	p.node.MayPreempt = p.synced.Load
	p.syncRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_ha_sync_refused_total", Help: "Sync connections and requests refused, by reason.",
	}, []string{"reason"})
	for _, r := range syncRefusals {
		p.syncRefused.WithLabelValues(r)
	}
	return p, nil
}

func (p *Pair) event(e api.Event) {
	if p.OnEvent != nil {
		p.OnEvent(e)
	}
}

func (p *Pair) onMaster() {
	if p.OnMaster != nil {
		p.OnMaster()
	}
}

// Node is this node's name in the pair.
func (p *Pair) Node() string { return p.opts.Node }

// Collectors are the pair's metrics, for the daemon's registry.
func (p *Pair) Collectors() []prometheus.Collector {
	return append(p.flows.Collectors(), p, p.syncRefused)
}

// defaultNodeName is the interface's first address: unique in the pair.
func defaultNodeName(ifi *net.Interface) string {
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil && !pfx.Addr().IsLinkLocalUnicast() {
			return pfx.Addr().String()
		}
	}
	return ifi.HardwareAddr.String()
}

// IsCoordinator says whether this node is master: only the master
// promotes.
func (p *Pair) IsCoordinator() bool { return p.node.Role() == ha.Master }

// Role is master or backup.
func (p *Pair) Role() string { return string(p.node.Role()) }

// vipAddrs are the distinct VIP addresses of a state.
func vipAddrs(s state.State) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, v := range s.VIPs {
		k, err := state.ParseVIPKey(v.VIP)
		if err == nil && !seen[k.Addr] {
			seen[k.Addr] = true
			out = append(out, k.Addr)
		}
	}
	return out
}

func (p *Pair) onRole(r ha.Role, why string) {
	p.roleMu.Lock()
	defer p.roleMu.Unlock()
	p.log.Info("ha role changed", "role", r, "reason", why)
	p.event(api.Event{Kind: "ha", To: string(r), Reason: "ha: this node is now " + string(r) + ": " + why, Revision: p.host.Revision()})
	if r == ha.Master {
		if err := p.owner.set(p.ctx, vipAddrs(p.host.State()), nil, true); err != nil {
			p.log.Error("take vip addresses", "err", err)
		}
		go p.onMaster()
		return
	}
	p.flowsDone.Store(false)
	p.synced.Store(false)
	p.mu.Lock()
	p.masterUsable = nil
	p.mu.Unlock()
	if err := p.owner.set(p.ctx, nil, nil, false); err != nil {
		p.log.Error("release vip addresses", "err", err)
	}
}

// start runs the pair until ctx ends. The node starts as backup and holds
// no VIP address, including any a previous run left behind.
func (p *Pair) Start(ctx context.Context) error {
	p.ctx = ctx
	if err := p.owner.set(ctx, nil, vipAddrs(p.host.State()), false); err != nil {
		return err
	}
	p.serveSync(ctx)
	go func() {
		if err := p.udp.Serve(p.node); err != nil {
			p.log.Error("ha adverts", "err", err)
		}
	}()
	if err := p.watchLink(ctx); err != nil {
		return err
	}
	go p.tickLoop(ctx)
	go p.pushLoop(ctx)
	r, err := p.dp.FlowEvents()
	if err != nil {
		return err
	}
	go p.flows.Push(ctx, r, func() []netip.AddrPort { return p.opts.Peers }, p.peerUp)
	p.log.Info("ha started", "node", p.opts.Node, "priority", p.opts.Priority, "advert", p.opts.Advert,
		"master_down", 3*p.opts.Advert+time.Duration(256-int(p.opts.Priority))*p.opts.Advert/256, "peers", p.opts.Peers)
	return nil
}

// close releases the sockets of a pair that never started.
func (p *Pair) Close() {
	p.udp.Close()
	for _, l := range p.tcp {
		l.Close()
	}
}

// stop hands the master role over at once (a priority-0 advert, as on
// `sluice ha failover`) and gives up the VIP addresses; the data plane
// keeps forwarding.
func (p *Pair) Stop() {
	if p.node.Role() == ha.Master {
		if err := p.node.Handoff(time.Now()); err != nil {
			p.log.Warn("hand over on shutdown", "err", err)
		}
	}
	p.Close()
	if err := p.owner.set(context.Background(), nil, nil, false); err != nil {
		p.log.Error("release vip addresses", "err", err)
	}
}

// watchLink puts the node in fault (backup, no takeover) while its
// interface is down or has no carrier.
func (p *Pair) watchLink(ctx context.Context) error {
	ch := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ListExisting: true}); err != nil {
		return fmt.Errorf("watch link %s: %w", p.dp.Iface().Name, err)
	}
	idx := int32(p.dp.Iface().Index)
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-ch:
				if !ok {
					return
				}
				if u.Index != idx {
					continue
				}
				up := u.Flags&unix.IFF_UP != 0 && u.Flags&unix.IFF_LOWER_UP != 0
				if fault := !up; fault != p.node.Status(time.Now()).Fault {
					p.log.Warn("ha interface state", "iface", p.dp.Iface().Name, "up", up)
					p.event(api.Event{Kind: "ha", Reason: fmt.Sprintf("ha: interface %s up=%v", p.dp.Iface().Name, up)})
					p.node.SetFault(fault, time.Now())
				}
			}
		}
	}()
	return nil
}

func (p *Pair) tickLoop(ctx context.Context) {
	every := min(p.opts.Advert/20, 5*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := p.node.Tick(now); err != nil && !p.node.Status(now).Fault {
				p.log.Debug("send advert", "err", err)
			}
			p.checkSync(now)
		}
	}
}

// checkSync pulls state and the flow table from the master while this
// backup differs from it, and tracks revision mismatches with peers.
func (p *Pair) checkSync(now time.Time) {
	st := p.node.Status(now)
	rev := p.host.Revision()
	var master *ha.PeerStatus
	for i, pe := range st.Peers {
		if !pe.Up {
			p.clearMismatch(pe.Addr)
			continue
		}
		if pe.Role == ha.Master {
			master = &st.Peers[i]
		}
		p.noteRevision(pe, rev, now, 2*st.MasterDown)
	}
	if st.Role != ha.Backup || master == nil {
		p.synced.Store(false)
		return
	}
	stateOK := master.Revision == rev && p.flowsDone.Load()
	if stateOK && p.synced.Load() {
		return // nothing changed here since it was found synced (invalidate)
	}
	synced := stateOK
	if synced {
		// The health view is compared now, not at the pull: a check that
		// restarted since must not count as up.
		p.mu.Lock()
		mu := p.masterUsable
		p.mu.Unlock()
		synced = mu != nil && slices.Equal(mu, p.host.UsableView())
	}
	p.synced.Store(synced)
	if synced {
		return
	}
	// Pull at most once per advert while the state differs, once a second
	// while only the health views do (they may differ for good: a backend
	// only one node reaches).
	every := int64(p.opts.Advert)
	if stateOK {
		every = int64(time.Second)
	}
	if now.UnixNano()-p.lastPull.Load() < every || !p.pulling.CompareAndSwap(false, true) {
		return
	}
	p.lastPull.Store(now.UnixNano())
	peer := p.peers[master.Addr]
	go func() {
		defer p.pulling.Store(false)
		if err := p.pull(peer); err != nil {
			p.log.Warn("sync from master", "peer", peer, "err", err)
		}
	}()
}

func (p *Pair) noteRevision(pe ha.PeerStatus, rev uint64, now time.Time, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pe.Revision == rev {
		if p.reported[pe.Addr] {
			p.event(api.Event{Kind: "ha", Reason: fmt.Sprintf("ha: revision in sync with peer %s (%d)", pe.Addr, rev), Revision: rev})
		}
		delete(p.mismatch, pe.Addr)
		delete(p.reported, pe.Addr)
		return
	}
	since, ok := p.mismatch[pe.Addr]
	if !ok {
		p.mismatch[pe.Addr] = now
		return
	}
	if now.Sub(since) > grace && !p.reported[pe.Addr] {
		p.reported[pe.Addr] = true
		p.event(api.Event{Kind: "ha", Reason: fmt.Sprintf("ha: revision mismatch: peer %s has %d, this node %d", pe.Addr, pe.Revision, rev), Revision: rev})
	}
}

func (p *Pair) clearMismatch(peer string) {
	p.mu.Lock()
	delete(p.mismatch, peer)
	delete(p.reported, peer)
	p.mu.Unlock()
}

func (p *Pair) Status() api.HAStatus {
	st := p.node.Status(time.Now())
	rev := p.host.Revision()
	out := api.HAStatus{Enabled: true, Node: st.Node, Role: string(st.Role), Fault: st.Fault, Priority: st.Priority, Preempt: p.opts.Preempt,
		Advert: st.AdvertEvery.String(), MasterDown: st.MasterDown.String(), Revision: rev, DualMaster: st.DualMaster,
		BadAdverts: st.BadAdverts, Transitions: map[string]uint64{}}
	out.Synced = st.Role == ha.Master || p.synced.Load()
	for k, v := range st.Transitions {
		out.Transitions[string(k)] = v
	}
	if lag := p.flows.LastLag(); lag > 0 {
		out.SyncLag = lag.String()
	}
	for _, pe := range st.Peers {
		hp := api.HAPeer{Addr: pe.Addr, Node: pe.Node, Role: string(pe.Role), Up: pe.Up, Revision: pe.Revision, RevisionOK: pe.Revision == rev}
		if pe.Node != "" {
			hp.AdvertAge = pe.Age.Round(time.Millisecond).String()
		}
		out.Peers = append(out.Peers, hp)
	}
	return out
}

// handoff is `sluice ha failover`: the master steps down with a
// priority-0 advert and the peer takes over at once.
func (p *Pair) Handoff() (api.HAStatus, error) {
	if p.node.Role() != ha.Master {
		return api.HAStatus{}, state.Conflict("ha failover: this node is not the master")
	}
	if err := p.node.Handoff(time.Now()); err != nil {
		return api.HAStatus{}, fmt.Errorf("ha failover: %w", err)
	}
	return p.Status(), nil
}

// Describe implements prometheus.Collector (unchecked).
func (p *Pair) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (p *Pair) Collect(ch chan<- prometheus.Metric) {
	st := p.node.Status(time.Now())
	for _, r := range []ha.Role{ha.Master, ha.Backup} {
		v := 0.0
		if st.Role == r {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descHARole, prometheus.GaugeValue, v, string(r))
		ch <- prometheus.MustNewConstMetric(descHATrans, prometheus.CounterValue, float64(st.Transitions[r]), string(r))
	}
	for _, reason := range []string{"length", "magic", "version", "mac", "replay", "malformed", "unknown-peer", "ttl", "own-name"} {
		ch <- prometheus.MustNewConstMetric(descHABad, prometheus.CounterValue, float64(st.BadAdverts[reason]), reason)
	}
	dual := 0.0
	if st.DualMaster {
		dual = 1
	}
	ch <- prometheus.MustNewConstMetric(descHADual, prometheus.GaugeValue, dual)
	p.mu.Lock()
	reported := map[string]bool{}
	for k, v := range p.reported {
		reported[k] = v
	}
	p.mu.Unlock()
	for _, pe := range st.Peers {
		up, mism := 0.0, 0.0
		if pe.Up {
			up = 1
		}
		if reported[pe.Addr] {
			mism = 1
		}
		ch <- prometheus.MustNewConstMetric(descHAPeerUp, prometheus.GaugeValue, up, pe.Addr)
		ch <- prometheus.MustNewConstMetric(descHAMismatch, prometheus.GaugeValue, mism, pe.Addr)
		ch <- prometheus.MustNewConstMetric(descHAPeerRev, prometheus.GaugeValue, float64(pe.Revision), pe.Addr)
		if pe.Node != "" {
			ch <- prometheus.MustNewConstMetric(descHAAge, prometheus.GaugeValue, pe.Age.Seconds(), pe.Addr)
		}
	}
}
