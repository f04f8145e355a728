package flowsync

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/peer"
	"github.com/sluicelb/sluice/loader"
)

// Link is one node's flow exchange with its peers over signed peer
// calls: it applies the batches they push and serves them its table, and
// pushes the batches of its own table's writes to each of them. An LB
// pair runs one with its peer, a cluster's Syncer one with the live nodes.
type Link struct {
	o       LinkOptions
	entries *prometheus.CounterVec
	lag     prometheus.Histogram
	lastLag atomic.Int64
}

// LinkOptions configure a Link.
type LinkOptions struct {
	Host     Host
	Datapath Datapath
	Log      *slog.Logger
	Signer   *peer.Signer
	Key      []byte
	// Path prefixes the link's calls: /ha/ (a pair's), /flowsync/.
	Path string
	// MaxFlows is the table's size (both families), bounding a dump.
	MaxFlows int
	// Client carries pushes, Bulk whole-table copies.
	Client, Bulk *http.Client
}

// NewLink makes a link; its metrics start at zero for every outcome.
func NewLink(o LinkOptions) *Link {
	l := &Link{o: o, lag: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sluice_flow_sync_lag_seconds", Help: "Time from a connection-table write to a peer's acknowledgement of it (oldest entry of each batch).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})}
	l.entries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_flow_sync_entries_total", Help: "Connection-table entries synced, by direction (sent, received, copied: whole tables) and result.",
	}, []string{"direction", "result"})
	for _, r := range [][2]string{{"sent", "ok"}, {"sent", "dropped"}, {"received", "applied"}, {"received", "unknown"}, {"copied", "applied"}, {"copied", "unknown"}} {
		l.entries.WithLabelValues(r[0], r[1])
	}
	return l
}

// Collectors are the link's metrics.
func (l *Link) Collectors() []prometheus.Collector { return []prometheus.Collector{l.entries, l.lag} }

// LastLag is the lag of the last batch a peer acknowledged (0: none yet).
func (l *Link) LastLag() time.Duration { return time.Duration(l.lastLag.Load()) }

// Limit bounds a request body of one of the link's kinds: a pushed batch.
func Limit(kind string) int64 {
	if kind == "flows" {
		return maxBatchBody
	}
	return 0 // a dump request carries nothing
}

// AnswerLimit bounds an answer of one of the link's kinds for a table of
// maxFlows entries (0: the default size, both families).
func AnswerLimit(kind string, maxFlows int) int64 {
	if kind == "flows-dump" {
		if maxFlows <= 0 {
			maxFlows = 2 * loader.DefaultFlowTableSize
		}
		return int64(maxFlows) * MaxFlowEntry
	}
	return maxAnswer
}

// Handle serves the link's calls through s on mux: pushed batches, and
// dumps of the whole table.
func (l *Link) Handle(mux *http.ServeMux, s *peer.Server) {
	s.Handle(mux, "POST "+l.o.Path+"flows", "flows", func(body []byte) ([]byte, error) {
		fs, err := UnmarshalFlows(body)
		if err != nil {
			return nil, peer.Malformed(err)
		}
		l.apply(fs, "received")
		return nil, nil
	})
	s.Handle(mux, "GET "+l.o.Path+"flows-dump", "flows-dump", func([]byte) ([]byte, error) {
		flows, err := l.o.Datapath.Flows()
		if err != nil {
			return nil, peer.Malformed(err)
		}
		return MarshalFlows(Entries(l.o.Host.BackendAddrs(), flows)), nil
	})
}

func (l *Link) apply(fs []FlowEntry, direction string) (applied, unknown int) {
	applied, unknown = Apply(l.o.Host, l.o.Datapath, fs, l.o.Log)
	l.entries.WithLabelValues(direction, "applied").Add(float64(applied))
	l.entries.WithLabelValues(direction, "unknown").Add(float64(unknown))
	return applied, unknown
}

// call sends a signed request of kind to p and returns the verified
// answer, read within its bound.
func (l *Link) call(ctx context.Context, method string, p netip.AddrPort, kind string, body []byte) ([]byte, error) {
	c := l.o.Client
	if kind == "flows-dump" {
		c = l.o.Bulk
	}
	return peer.Call(ctx, c, l.o.Signer, l.o.Key, method, peer.URL(p)+l.o.Path+kind, kind, body, AnswerLimit(kind, l.o.MaxFlows))
}

// Copy copies peer p's whole table into this node's.
func (l *Link) Copy(ctx context.Context, p netip.AddrPort) (applied, unknown int, err error) {
	body, err := l.call(ctx, http.MethodGet, p, "flows-dump", nil)
	if err != nil {
		return 0, 0, err
	}
	fs, err := UnmarshalFlows(body)
	if err != nil {
		return 0, 0, fmt.Errorf("flow table from %s: %w", p, err)
	}
	applied, unknown = l.apply(fs, "copied")
	return applied, unknown, nil
}

// Push hands each batch of r's connection-table writes to a sender per
// peer until ctx ends (which closes r): a slow peer loses batches
// (counted), not the reader. peers is read at every batch, so a peer that
// appears gets every batch from then on; a batch for a peer that up (nil:
// every one) says is down is dropped, counted.
func (l *Link) Push(ctx context.Context, r FlowReader, peers func() []netip.AddrPort, up func(netip.AddrPort) bool) {
	ss := &senders{l: l, ctx: ctx, up: up, peers: peers, by: map[netip.AddrPort]*sender{}}
	Batches(ctx, r, l.o.Host.BackendAddrs, l.o.Log, ss.hand)
}

// send pushes one peer's batches, in order, until ctx ends.
func (l *Link) send(ctx context.Context, p netip.AddrPort, q chan Batch, up func(netip.AddrPort) bool) {
	for {
		var b Batch
		select {
		case <-ctx.Done():
			return
		case b = <-q:
		}
		if up != nil && !up(p) {
			l.entries.WithLabelValues("sent", "dropped").Add(float64(b.N))
			continue
		}
		t0 := time.Now()
		_, err := l.call(ctx, http.MethodPost, p, "flows", b.Body)
		l.o.Log.Debug("flow batch", "peer", p, "entries", b.N, "post", time.Since(t0), "queued", len(q), "age", loader.MonotonicNow()-b.Oldest, "err", err)
		if err != nil {
			l.entries.WithLabelValues("sent", "dropped").Add(float64(b.N))
			continue
		}
		lag := loader.MonotonicNow() - b.Oldest
		l.lag.Observe(lag.Seconds())
		l.entries.WithLabelValues("sent", "ok").Add(float64(b.N))
		l.lastLag.Store(int64(lag))
	}
}

// sender is one peer's queue.
type sender struct {
	q      chan Batch
	cancel context.CancelFunc
}

// senders follows the peer set: one sender per peer.
type senders struct {
	l     *Link
	ctx   context.Context
	up    func(netip.AddrPort) bool
	peers func() []netip.AddrPort
	by    map[netip.AddrPort]*sender
}

// refresh starts a sender for each new peer and stops those of peers
// that left.
func (ss *senders) refresh() {
	live := map[netip.AddrPort]bool{}
	for _, p := range ss.peers() {
		live[p] = true
		if ss.by[p] == nil {
			ctx, cancel := context.WithCancel(ss.ctx)
			sd := &sender{q: make(chan Batch, queueLen), cancel: cancel}
			ss.by[p] = sd
			go ss.l.send(ctx, p, sd.q, ss.up)
		}
	}
	for p, sd := range ss.by {
		if !live[p] {
			sd.cancel()
			delete(ss.by, p)
		}
	}
}

// hand gives b to every peer's sender; a full queue drops it, counted.
func (ss *senders) hand(b Batch) {
	ss.refresh()
	for _, sd := range ss.by {
		select {
		case sd.q <- b:
		default:
			ss.l.entries.WithLabelValues("sent", "dropped").Add(float64(b.N))
		}
	}
}
