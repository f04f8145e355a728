// Package flowsync shares connection-table entries among a cluster's
// active nodes: every entry a node's data plane writes goes to every
// other live node, and a node that joins copies each peer's whole table
// before it may announce. A flow the routers rehash to another node (a
// node lost, joined or drained) then keeps its backend there even when
// the ring changed since the flow began. The peers are the cluster's live
// nodes; requests are signed peer calls (control/peer) with a shared
// key. An LB pair shares its table with its peer through the same Link.
package flowsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/peer"
	"github.com/sluicelb/sluice/loader"
)

// DefaultPort is the flow-sync port (TCP) on each node's cluster address.
const DefaultPort = 9644

// Limits. A request body is read before its MAC can be checked, so each
// kind carries only what it needs, only live nodes may connect, and only
// a few at a time.
const (
	batchMax     = 512 // entries per pushed batch
	batchWait    = 2 * time.Millisecond
	maxBatchBody = batchMax * MaxFlowEntry
	maxAnswer    = 4 << 10 // a push's answer: empty
	maxConns     = 4       // per peer: its push connection, a dump, and spares
	idleTimeout  = 30 * time.Second
	callTimeout  = 2 * time.Second
	dumpTimeout  = 30 * time.Second
	queueLen     = 64 // batches waiting per peer; more are dropped and counted
)

// Refusal reasons, counted in sluice_flow_sync_refused_total{reason}.
var refusals = []string{"unknown-peer", "busy", "too-large", "read", "mac", "replay", "malformed"}

// Peers are the other live nodes of the cluster, as the store has them.
type Peers interface {
	// PeerAddrs are the other nodes' addresses; known is false until
	// the node list was read from the store once.
	PeerAddrs() (addrs []netip.Addr, known bool)
}

// Host translates between data-plane backend indexes, which differ
// between nodes, and backend addresses, which do not.
type Host interface {
	FlowBackend(dst netip.AddrPort, proto loader.Proto, backend netip.Addr) (uint32, bool)
	BackendAddrs() map[uint32]netip.Addr
}

// Datapath is the connection table.
type Datapath interface {
	Flows() ([]loader.Flow, error)
	SetFlow(loader.Flow) error
}

// FlowReader yields the data plane's connection-table writes.
type FlowReader interface {
	Read(deadline time.Time) (loader.FlowEvent, error)
	Close() error
}

// Options configure a Syncer.
type Options struct {
	Node     string
	Key      []byte
	Boot     uint64     // this process's boot counter (replay guard)
	Local    netip.Addr // listen here: this node's cluster address
	Port     uint16     // on every node alike
	MaxFlows int        // the table's size, bounding a dump's answer
}

// Syncer is one node's part in flow sync.
type Syncer struct {
	// OnJoined, if set before Run, is called once the peers' tables
	// were copied.
	OnJoined func(Joined)

	opts  Options
	peers Peers
	log   *slog.Logger
	ln    net.Listener
	link  *Link
	srv   *peer.Server

	copied atomic.Bool // every peer's table was copied (or none to copy)

	refused *prometheus.CounterVec
}

// New listens on opts.Local:opts.Port; Run serves and pushes.
func New(opts Options, peers Peers, host Host, dp Datapath, log *slog.Logger) (*Syncer, error) {
	if len(opts.Key) == 0 {
		return nil, errors.New("flow sync: no key")
	}
	if !opts.Local.IsValid() {
		return nil, errors.New("flow sync: no local address to listen on")
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(opts.Local, opts.Port).String())
	if err != nil {
		return nil, fmt.Errorf("--flow-sync-port %d on %s: %w", opts.Port, opts.Local, err)
	}
	log = log.With("component", "flowsync")
	s := &Syncer{opts: opts, peers: peers, log: log, ln: ln}
	s.link = NewLink(LinkOptions{Host: host, Datapath: dp, Log: log, Signer: &peer.Signer{Key: opts.Key, Node: opts.Node, Boot: opts.Boot},
		Key: opts.Key, Path: "/flowsync/", MaxFlows: opts.MaxFlows,
		Client: fromLocal(opts.Local, callTimeout), Bulk: fromLocal(opts.Local, dumpTimeout)})
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_flow_sync_refused_total", Help: "Flow-sync connections and requests refused, by reason.",
	}, []string{"reason"})
	for _, r := range refusals {
		s.refused.WithLabelValues(r)
	}
	s.srv = &peer.Server{Key: opts.Key, Verifier: &peer.Verifier{Key: opts.Key}, Limit: Limit, Refused: s.refuse}
	return s, nil
}

func (s *Syncer) refuse(reason string) { s.refused.WithLabelValues(reason).Inc() }

// fromLocal is an HTTP client whose connections leave from local: the
// peers admit this node by its cluster address, whatever source address
// the kernel would pick.
func fromLocal(local netip.Addr, timeout time.Duration) *http.Client {
	d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), Timeout: timeout}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: idleTimeout}}
}

// Collectors are the syncer's metrics.
func (s *Syncer) Collectors() []prometheus.Collector {
	return append(s.link.Collectors(), s.refused)
}

// Copied reports whether this node holds the other nodes' tables: every
// peer's was copied once (or there was none).
func (s *Syncer) Copied() bool { return s.copied.Load() }

// Close stops listening (a daemon whose start failed); Run's context
// ends the rest.
func (s *Syncer) Close() error { return s.ln.Close() }

// Addr is where the syncer listens.
func (s *Syncer) Addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

// Run serves the peers' pushes and dumps, copies their tables once, and
// pushes this node's writes from r, until ctx ends.
func (s *Syncer) Run(ctx context.Context, r FlowReader) {
	mux := http.NewServeMux()
	s.link.Handle(mux, s.srv)
	s.srv.Serve(ctx, mux, []net.Listener{s.ln}, s.isPeer, maxConns, dumpTimeout)
	go s.join(ctx)
	s.link.Push(ctx, r, s.livePeers, nil)
}

// livePeers are the other live nodes' flow-sync endpoints.
func (s *Syncer) livePeers() []netip.AddrPort {
	addrs, _ := s.peers.PeerAddrs()
	out := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a.Unmap(), s.opts.Port))
	}
	return out
}

// isPeer reports whether a is a live node's address now.
func (s *Syncer) isPeer(a netip.Addr) bool {
	addrs, _ := s.peers.PeerAddrs()
	for _, p := range addrs {
		if p.Unmap() == a {
			return true
		}
	}
	return false
}
