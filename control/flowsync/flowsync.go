// Package flowsync shares connection-table entries among a cluster's
// active nodes: every entry a node's data plane writes goes to every
// other live node, and a node that joins copies each peer's whole table
// before it may announce. A flow the routers rehash to another node (a
// node lost, joined or drained) then keeps its backend there even when
// the ring changed since the flow began. The peers are the cluster's live
// nodes; requests carry the LB pair's HMAC scheme with a shared key.
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

	"github.com/sluicelb/sluice/control/ha"
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
	maxBatchBody = batchMax * ha.MaxFlowEntry
	maxAnswer    = 4 << 10 // a push's answer: empty
	maxConns     = 8
	readTimeout  = 5 * time.Second
	idleTimeout  = 30 * time.Second
	headerBytes  = 8 << 10
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

	opts   Options
	peers  Peers
	host   Host
	dp     Datapath
	log    *slog.Logger
	ln     net.Listener
	signer *ha.Signer
	verify *ha.Verifier
	client *http.Client
	bulk   *http.Client

	copied atomic.Bool // every peer's table was copied (or none to copy)

	entries *prometheus.CounterVec
	refused *prometheus.CounterVec
	lag     prometheus.Histogram
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
	s := &Syncer{opts: opts, peers: peers, host: host, dp: dp, log: log.With("component", "flowsync"), ln: ln,
		signer: &ha.Signer{Key: opts.Key, Node: opts.Node, Boot: opts.Boot}, verify: &ha.Verifier{Key: opts.Key},
		client: fromLocal(opts.Local, callTimeout), bulk: fromLocal(opts.Local, dumpTimeout)}
	s.entries = EntriesMetric([2]string{"sent", "ok"}, [2]string{"sent", "dropped"}, [2]string{"received", "applied"},
		[2]string{"received", "unknown"}, [2]string{"copied", "applied"}, [2]string{"copied", "unknown"})
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_flow_sync_refused_total", Help: "Flow-sync connections and requests refused, by reason.",
	}, []string{"reason"})
	for _, r := range refusals {
		s.refused.WithLabelValues(r)
	}
	s.lag = LagMetric()
	return s, nil
}

// EntriesMetric is sluice_flow_sync_entries_total, the pair's and the
// cluster's, with each (direction, result) of zero exported at 0.
func EntriesMetric(zero ...[2]string) *prometheus.CounterVec {
	m := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_flow_sync_entries_total", Help: "Connection-table entries synced, by direction and result.",
	}, []string{"direction", "result"})
	for _, r := range zero {
		m.WithLabelValues(r[0], r[1])
	}
	return m
}

// LagMetric is sluice_flow_sync_lag_seconds, the pair's and the
// cluster's.
func LagMetric() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sluice_flow_sync_lag_seconds", Help: "Time from a connection-table write to a peer's acknowledgement of it (oldest entry of each batch).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})
}

// fromLocal is an HTTP client whose connections leave from local: the
// peers admit this node by its cluster address, whatever source address
// the kernel would pick.
func fromLocal(local netip.Addr, timeout time.Duration) *http.Client {
	d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), Timeout: timeout}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: idleTimeout}}
}

// Collectors are the syncer's metrics.
func (s *Syncer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.entries, s.refused, s.lag}
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
	s.serve(ctx)
	go s.join(ctx)
	s.flowLoop(ctx, r)
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

func (s *Syncer) peerURL(a netip.Addr) string {
	return ha.PeerURL(netip.AddrPortFrom(a, s.opts.Port))
}
