package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/loader"
)

// HAOptions configure an active/standby pair (sluice daemon --ha-*).
type HAOptions struct {
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
}

// Defaults of an LB pair.
const (
	DefaultHAAdvert   = 100 * time.Millisecond
	DefaultHAPriority = 100
	minHAKey          = 16
	// flowBatchMax and flowBatchWait bound how many entries and how long
	// a flow-sync batch collects before it is sent.
	flowBatchMax  = 512
	flowBatchWait = 2 * time.Millisecond
	syncTimeout   = time.Second
)

func (o *HAOptions) validate() error {
	if len(o.Peers) == 0 {
		return errors.New("--ha-peer: at least one peer address is required")
	}
	if o.Priority == 0 {
		return errors.New("--ha-priority: 1 to 255 (0 is reserved for stepping down)")
	}
	if o.Advert < 10*time.Millisecond || o.Advert > 10*time.Second {
		return fmt.Errorf("--ha-advert %v: 10ms to 10s", o.Advert)
	}
	if len(o.Key) < minHAKey {
		return fmt.Errorf("--ha-key-file: the key has %d bytes, want at least %d", len(o.Key), minHAKey)
	}
	if o.Port == 0 {
		o.Port = ha.DefaultPort
	}
	return nil
}

// ReadHAKey reads a pair's shared key; surrounding white space is ignored.
func ReadHAKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ha-key-file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < minHAKey {
		return nil, fmt.Errorf("--ha-key-file %s: %d bytes, want at least %d", path, len(b), minHAKey)
	}
	return b, nil
}

// pair runs this daemon's side of an LB pair: adverts and roles, VIP
// addresses, state replication and flow sync. It is the daemon's
// Coordinator: only the master promotes replicas.
type pair struct {
	d      *Daemon
	opts   HAOptions
	log    *slog.Logger
	node   *ha.Node
	udp    *ha.UDP
	tcp    net.Listener
	signer *ha.Signer
	verify *ha.Verifier
	client *http.Client
	owner  *vipOwner
	peers  map[string]netip.AddrPort // by ha.PeerKey
	ctx    context.Context

	pushq     chan struct{} // a committed revision to push (coalesced)
	pulling   atomic.Bool
	lastPull  atomic.Int64 // unix ns
	flowsDone atomic.Bool  // a full flow table was received since becoming backup
	synced    atomic.Bool  // state, flows and health match the master: may pre-empt

	mu           sync.Mutex
	masterUsable []string             // the master's usable backends at the last pull
	mismatch     map[string]time.Time // peer -> since when its revision differs
	reported     map[string]bool      // mismatch event sent
	lastLag      time.Duration

	syncLag     prometheus.Histogram
	syncEntries *prometheus.CounterVec
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

func newPair(d *Daemon, opts HAOptions) (*pair, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if opts.Node == "" {
		opts.Node = defaultNodeName(d.dp.Iface())
	}
	boot := uint64(time.Now().UnixNano())
	p := &pair{d: d, opts: opts, log: d.log.With("component", "ha"), owner: newVIPOwner(d.dp.Iface(), d.log),
		signer: &ha.Signer{Key: opts.Key, Node: opts.Node, Boot: boot}, verify: &ha.Verifier{Key: opts.Key},
		client: &http.Client{Timeout: syncTimeout}, peers: map[string]netip.AddrPort{}, pushq: make(chan struct{}, 1),
		mismatch: map[string]time.Time{}, reported: map[string]bool{}}
	for _, a := range opts.Peers {
		p.peers[ha.PeerKey(a.Addr())] = a
	}
	var err error
	if p.udp, err = ha.ListenUDP(opts.Port, opts.Peers); err != nil {
		return nil, err
	}
	if p.tcp, err = net.Listen("tcp", ":"+strconv.Itoa(int(opts.Port))); err != nil {
		p.udp.Close()
		return nil, fmt.Errorf("ha sync listener on port %d: %w", opts.Port, err)
	}
	fsm := ha.NewFSM(opts.Node, opts.Priority, opts.Advert, opts.Preempt, time.Now())
	p.node = ha.NewNode(fsm, opts.Key, boot, p.udp, d.revision)
	p.node.OnRole = p.onRole
	p.node.OnOutranked = func() { p.owner.reannounce(p.ctx) }
	p.node.MayPreempt = p.synced.Load
	p.syncLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sluice_flow_sync_lag_seconds", Help: "Time from a connection-table write to the peer's acknowledgement of it (oldest entry of each batch).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})
	p.syncEntries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_flow_sync_entries_total", Help: "Connection-table entries synced, by direction and result.",
	}, []string{"direction", "result"})
	for _, r := range [][2]string{{"sent", "ok"}, {"sent", "dropped"}, {"received", "applied"}, {"received", "unknown"}} {
		p.syncEntries.WithLabelValues(r[0], r[1])
	}
	return p, nil
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

// IsCoordinator implements Coordinator: only the master promotes.
func (p *pair) IsCoordinator() bool { return p.node.Role() == ha.Master }

// Role implements Coordinator.
func (p *pair) Role() string { return string(p.node.Role()) }

// vipAddrs are the distinct VIP addresses of a state.
func vipAddrs(s State) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, v := range s.VIPs {
		k, err := ParseVIPKey(v.VIP)
		if err == nil && !seen[k.Addr] {
			seen[k.Addr] = true
			out = append(out, k.Addr)
		}
	}
	return out
}

func (p *pair) onRole(r ha.Role, why string) {
	p.log.Info("ha role changed", "role", r, "reason", why)
	p.d.events.Add(Event{Kind: "ha", To: string(r), Reason: "ha: this node is now " + string(r) + ": " + why, Revision: p.d.revision()})
	if r == ha.Master {
		if err := p.owner.set(p.ctx, vipAddrs(p.d.State()), nil, true); err != nil {
			p.log.Error("take vip addresses", "err", err)
		}
		go p.d.checkPrimaries()
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
func (p *pair) start(ctx context.Context) error {
	p.ctx = ctx
	if err := p.owner.set(ctx, nil, vipAddrs(p.d.State()), false); err != nil {
		return err
	}
	srv := &http.Server{Handler: p.syncHandler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(p.tcp)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
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
	r, err := p.d.dp.FlowEvents()
	if err != nil {
		return err
	}
	go p.flowLoop(ctx, r)
	p.log.Info("ha started", "node", p.opts.Node, "priority", p.opts.Priority, "advert", p.opts.Advert,
		"master_down", 3*p.opts.Advert+time.Duration(256-int(p.opts.Priority))*p.opts.Advert/256, "peers", p.opts.Peers)
	return nil
}

// close releases the sockets of a pair that never started.
func (p *pair) close() {
	p.udp.Close()
	p.tcp.Close()
}

// stop hands the master role over at once (a priority-0 advert, as on
// `sluice ha failover`) and gives up the VIP addresses; the data plane
// keeps forwarding.
func (p *pair) stop() {
	if p.node.Role() == ha.Master {
		if err := p.node.Handoff(time.Now()); err != nil {
			p.log.Warn("hand over on shutdown", "err", err)
		}
	}
	p.close()
	if err := p.owner.set(context.Background(), nil, nil, false); err != nil {
		p.log.Error("release vip addresses", "err", err)
	}
}

// watchLink puts the node in fault (backup, no takeover) while its
// interface is down or has no carrier.
func (p *pair) watchLink(ctx context.Context) error {
	ch := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ListExisting: true}); err != nil {
		return fmt.Errorf("watch link %s: %w", p.d.opts.Iface, err)
	}
	idx := int32(p.d.dp.Iface().Index)
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
					p.log.Warn("ha interface state", "iface", p.d.opts.Iface, "up", up)
					p.d.events.Add(Event{Kind: "ha", Reason: fmt.Sprintf("ha: interface %s up=%v", p.d.opts.Iface, up)})
					p.node.SetFault(fault, time.Now())
				}
			}
		}
	}()
	return nil
}

func (p *pair) tickLoop(ctx context.Context) {
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
func (p *pair) checkSync(now time.Time) {
	st := p.node.Status(now)
	rev := p.d.revision()
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
	synced := master.Revision == rev && p.flowsDone.Load()
	if synced {
		// The health view is compared now, not at the pull: a check that
		// restarted since must not count as up.
		p.mu.Lock()
		mu := p.masterUsable
		p.mu.Unlock()
		synced = mu != nil && slices.Equal(mu, p.d.usableView())
	}
	p.synced.Store(synced)
	if synced {
		return
	}
	if now.UnixNano()-p.lastPull.Load() < int64(p.opts.Advert) || !p.pulling.CompareAndSwap(false, true) {
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

func (p *pair) noteRevision(pe ha.PeerStatus, rev uint64, now time.Time, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pe.Revision == rev {
		if p.reported[pe.Addr] {
			p.d.events.Add(Event{Kind: "ha", Reason: fmt.Sprintf("ha: revision in sync with peer %s (%d)", pe.Addr, rev), Revision: rev})
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
		p.d.events.Add(Event{Kind: "ha", Reason: fmt.Sprintf("ha: revision mismatch: peer %s has %d, this node %d", pe.Addr, pe.Revision, rev), Revision: rev})
	}
}

func (p *pair) clearMismatch(peer string) {
	p.mu.Lock()
	delete(p.mismatch, peer)
	delete(p.reported, peer)
	p.mu.Unlock()
}

// committed is called after every committed change on this node.
func (p *pair) committed() {
	select {
	case p.pushq <- struct{}{}:
	default:
	}
}

// pushLoop follows committed revisions: the master updates its VIP
// addresses and streams the state to every peer.
func (p *pair) pushLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.pushq:
		}
		if p.node.Role() != ha.Master {
			continue
		}
		st := p.d.State()
		if err := p.owner.set(ctx, vipAddrs(st), nil, true); err != nil {
			p.log.Error("vip addresses", "err", err)
		}
		body, err := json.Marshal(st)
		if err != nil {
			continue
		}
		for _, peer := range p.opts.Peers {
			if _, err := p.call(ctx, http.MethodPost, peer, "state", body); err != nil {
				p.log.Debug("push state", "peer", peer, "revision", st.Revision, "err", err)
			}
		}
	}
}

// call sends a signed request of kind to peer and returns the verified
// response body.
func (p *pair) call(ctx context.Context, method string, peer netip.AddrPort, kind string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, ha.PeerURL(peer)+"/ha/"+kind, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	p.signer.Sign(req.Header, kind, body)
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, kind, resp.Status, bytes.TrimSpace(out))
	}
	if err := ha.VerifyResponse(p.opts.Key, req.Header, resp.Header, kind, out); err != nil {
		return nil, err
	}
	return out, nil
}

// pull copies the master's state and, once per backup term, its whole
// connection table.
func (p *pair) pull(peer netip.AddrPort) error {
	body, err := p.call(p.ctx, http.MethodGet, peer, "state-pull", nil)
	if err != nil {
		return err
	}
	var view syncView
	if err := json.Unmarshal(body, &view); err != nil {
		return fmt.Errorf("state from %s: %w", peer, err)
	}
	st := view.State
	if err := p.d.applyReplica(st); err != nil {
		return err
	}
	p.mu.Lock()
	p.masterUsable = append([]string{}, view.Usable...) // non-nil: pulled
	p.mu.Unlock()
	if p.flowsDone.Load() {
		return nil
	}
	body, err = p.call(p.ctx, http.MethodGet, peer, "flows-dump", nil)
	if err != nil {
		return err
	}
	fs, err := ha.UnmarshalFlows(body)
	if err != nil {
		return fmt.Errorf("flow table from %s: %w", peer, err)
	}
	applied, unknown := p.applyFlows(fs)
	p.flowsDone.Store(true)
	p.log.Info("flow table copied from master", "peer", peer, "entries", applied, "unknown", unknown)
	p.d.events.Add(Event{Kind: "ha", Reason: fmt.Sprintf("ha: copied %d flows from %s (%d for unknown backends)", applied, peer, unknown), Revision: st.Revision})
	return nil
}

// invalidate drops the synced flag at once when this node's state or
// health view changes; checkSync re-derives it on its next tick.
func (p *pair) invalidate() { p.synced.Store(false) }

// syncView is what a backup pulls: the master's state and which backends
// it forwards to, so that the backup pre-empts only with the same view.
type syncView struct {
	State  State    `json:"state"`
	Usable []string `json:"usable"`
}

// usableView lists "VIP backend" for every backend the data plane may use.
func (d *Daemon) usableView() []string {
	var out []string
	for _, v := range d.State().VIPs {
		k, _ := ParseVIPKey(v.VIP)
		view, _, _ := d.rec.View(k)
		for a, bv := range view {
			if bv.Usable {
				out = append(out, v.VIP+" "+a.String())
			}
		}
	}
	slices.Sort(out)
	return out
}

// applyFlows writes synced entries with this node's backend indexes.
func (p *pair) applyFlows(fs []ha.FlowEntry) (applied, unknown int) {
	now := loader.MonotonicCoarseNow()
	for _, f := range fs {
		idx, ok := p.d.rec.FlowBackend(f.Dst, loader.Proto(f.Proto), f.Backend)
		if !ok {
			unknown++
			continue
		}
		if err := p.d.dp.SetFlow(loader.Flow{Src: f.Src, Dst: f.Dst, Proto: loader.Proto(f.Proto), Backend: idx, LastSeenNano: now}); err != nil {
			p.log.Warn("write synced flow", "err", err)
			unknown++
			continue
		}
		applied++
	}
	p.syncEntries.WithLabelValues("received", "applied").Add(float64(applied))
	p.syncEntries.WithLabelValues("received", "unknown").Add(float64(unknown))
	return applied, unknown
}

// flowEntries turns data-plane flows into synced entries.
func (p *pair) flowEntries(flows []loader.Flow) []ha.FlowEntry {
	refs := p.d.rec.BackendRefs()
	out := make([]ha.FlowEntry, 0, len(flows))
	for _, f := range flows {
		ref, ok := refs[f.Backend]
		if !ok {
			continue
		}
		out = append(out, ha.FlowEntry{Src: f.Src, Dst: f.Dst, Proto: uint8(f.Proto), Backend: ref.Addr})
	}
	return out
}

type flowBatch struct {
	body   []byte
	n      int
	oldest time.Duration // monotonic time of the oldest write in the batch
}

// flowLoop reads connection-table writes, batches them and hands each
// batch to every peer's sender; a slow peer loses batches (counted), not
// the reader.
func (p *pair) flowLoop(ctx context.Context, r *loader.FlowEventReader) {
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	queues := map[netip.AddrPort]chan flowBatch{}
	for _, peer := range p.opts.Peers {
		q := make(chan flowBatch, 64)
		queues[peer] = q
		go p.sendFlows(ctx, peer, q)
	}
	var pending []loader.Flow
	var oldest time.Duration
	flush := func() {
		if len(pending) == 0 {
			return
		}
		es := p.flowEntries(pending)
		b := flowBatch{body: ha.MarshalFlows(es), n: len(es), oldest: oldest}
		pending = pending[:0]
		for _, q := range queues {
			select {
			case q <- b:
			default:
				p.syncEntries.WithLabelValues("sent", "dropped").Add(float64(b.n))
			}
		}
	}
	for {
		deadline := time.Time{}
		if len(pending) > 0 {
			deadline = time.Now().Add(flowBatchWait)
		}
		ev, err := r.Read(deadline)
		switch {
		case errors.Is(err, loader.ErrClosed):
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			flush()
			continue
		case err != nil:
			p.log.Warn("flow events", "err", err)
			continue
		}
		if len(pending) == 0 {
			oldest = ev.At
		}
		pending = append(pending, ev.Flow)
		if len(pending) >= flowBatchMax {
			flush()
		}
	}
}

func (p *pair) sendFlows(ctx context.Context, peer netip.AddrPort, q chan flowBatch) {
	key := ha.PeerKey(peer.Addr())
	for {
		var b flowBatch
		select {
		case <-ctx.Done():
			return
		case b = <-q:
		}
		if !p.peerUp(key) {
			p.syncEntries.WithLabelValues("sent", "dropped").Add(float64(b.n))
			continue
		}
		t0 := time.Now()
		_, err := p.call(ctx, http.MethodPost, peer, "flows", b.body)
		p.log.Debug("flow batch", "peer", peer, "entries", b.n, "post", time.Since(t0), "queued", len(q), "age", loader.MonotonicNow()-b.oldest)
		if err != nil {
			p.syncEntries.WithLabelValues("sent", "dropped").Add(float64(b.n))
			p.log.Debug("flow sync", "peer", peer, "err", err)
			continue
		}
		lag := loader.MonotonicNow() - b.oldest
		p.syncLag.Observe(lag.Seconds())
		p.syncEntries.WithLabelValues("sent", "ok").Add(float64(b.n))
		p.mu.Lock()
		p.lastLag = lag
		p.mu.Unlock()
	}
}

func (p *pair) peerUp(key string) bool {
	for _, pe := range p.node.Status(time.Now()).Peers {
		if pe.Addr == key {
			return pe.Up
		}
	}
	return false
}

// syncHandler serves the peer's state pushes and pulls and flow sync.
func (p *pair) syncHandler() http.Handler {
	mux := http.NewServeMux()
	serve := func(pattern, kind string, fn func(body []byte) ([]byte, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<30))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if _, err := p.verify.Verify(r.Header, kind, body); err != nil {
				p.node.Refuse(err)
				http.Error(w, "refused: "+ha.Reason(err), http.StatusForbidden)
				return
			}
			out, err := fn(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
				return
			}
			ha.SignResponse(p.opts.Key, r.Header, w.Header(), kind, out)
			w.Write(out)
		})
	}
	serve("POST /ha/state", "state", func(body []byte) ([]byte, error) {
		if p.node.Role() == ha.Master {
			return nil, errors.New("this node is master: it keeps its own state")
		}
		var st State
		if err := json.Unmarshal(body, &st); err != nil {
			return nil, err
		}
		if st.Revision <= p.d.revision() {
			// A push that arrives late (held up while this node was
			// unreachable) must not roll back what a pull brought since.
			// Pulls, which answer this node's own request, always apply.
			return nil, nil
		}
		return nil, p.d.applyReplica(st)
	})
	serve("GET /ha/state-pull", "state-pull", func([]byte) ([]byte, error) {
		return json.Marshal(syncView{State: p.d.State(), Usable: p.d.usableView()})
	})
	serve("POST /ha/flows", "flows", func(body []byte) ([]byte, error) {
		fs, err := ha.UnmarshalFlows(body)
		if err != nil {
			return nil, err
		}
		p.applyFlows(fs)
		return nil, nil
	})
	serve("GET /ha/flows-dump", "flows-dump", func([]byte) ([]byte, error) {
		flows, err := p.d.dp.Flows()
		if err != nil {
			return nil, err
		}
		return ha.MarshalFlows(p.flowEntries(flows)), nil
	})
	return mux
}

// HAStatus is what `sluice ha status -o json` prints.
type HAStatus struct {
	Enabled     bool              `json:"enabled"`
	Node        string            `json:"node,omitempty"`
	Role        string            `json:"role"`
	Fault       bool              `json:"fault,omitempty"`
	Priority    uint8             `json:"priority,omitempty"`
	Preempt     bool              `json:"preempt,omitempty"`
	Advert      string            `json:"advert,omitempty"`
	MasterDown  string            `json:"master_down,omitempty"`
	Revision    uint64            `json:"revision"`
	DualMaster  bool              `json:"dual_master"`
	Synced      bool              `json:"synced"`
	SyncLag     string            `json:"flow_sync_lag,omitempty"`
	Peers       []HAPeer          `json:"peers,omitempty"`
	BadAdverts  map[string]uint64 `json:"bad_adverts,omitempty"`
	Transitions map[string]uint64 `json:"transitions,omitempty"`
}

// HAPeer is one peer in HAStatus.
type HAPeer struct {
	Addr       string `json:"addr"`
	Node       string `json:"node,omitempty"`
	Role       string `json:"role,omitempty"`
	Up         bool   `json:"up"`
	AdvertAge  string `json:"advert_age,omitempty"`
	Revision   uint64 `json:"revision"`
	RevisionOK bool   `json:"revision_match"`
}

func (p *pair) status() HAStatus {
	st := p.node.Status(time.Now())
	rev := p.d.revision()
	out := HAStatus{Enabled: true, Node: st.Node, Role: string(st.Role), Fault: st.Fault, Priority: st.Priority, Preempt: p.opts.Preempt,
		Advert: st.AdvertEvery.String(), MasterDown: st.MasterDown.String(), Revision: rev, DualMaster: st.DualMaster,
		BadAdverts: st.BadAdverts, Transitions: map[string]uint64{}}
	out.Synced = st.Role == ha.Master || p.synced.Load()
	for k, v := range st.Transitions {
		out.Transitions[string(k)] = v
	}
	p.mu.Lock()
	if p.lastLag > 0 {
		out.SyncLag = p.lastLag.String()
	}
	p.mu.Unlock()
	for _, pe := range st.Peers {
		hp := HAPeer{Addr: pe.Addr, Node: pe.Node, Role: string(pe.Role), Up: pe.Up, Revision: pe.Revision, RevisionOK: pe.Revision == rev}
		if pe.Node != "" {
			hp.AdvertAge = pe.Age.Round(time.Millisecond).String()
		}
		out.Peers = append(out.Peers, hp)
	}
	return out
}

// handoff is `sluice ha failover`: the master steps down with a
// priority-0 advert and the peer takes over at once.
func (p *pair) handoff() (HAStatus, error) {
	if p.node.Role() != ha.Master {
		return HAStatus{}, httpError{http.StatusConflict, errors.New("ha failover: this node is not the master")}
	}
	if err := p.node.Handoff(time.Now()); err != nil {
		return HAStatus{}, fmt.Errorf("ha failover: %w", err)
	}
	return p.status(), nil
}

// Describe implements prometheus.Collector (unchecked).
func (p *pair) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (p *pair) Collect(ch chan<- prometheus.Metric) {
	st := p.node.Status(time.Now())
	for _, r := range []ha.Role{ha.Master, ha.Backup} {
		v := 0.0
		if st.Role == r {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descHARole, prometheus.GaugeValue, v, string(r))
		ch <- prometheus.MustNewConstMetric(descHATrans, prometheus.CounterValue, float64(st.Transitions[r]), string(r))
	}
	for _, reason := range []string{"length", "magic", "version", "mac", "replay", "malformed", "unknown-peer"} {
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
