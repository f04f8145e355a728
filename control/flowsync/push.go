package flowsync

import (
	"context"
	"net/http"
	"net/netip"

	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/loader"
)

// call sends a signed request of kind to peer and returns the verified
// answer, read within its bound.
func (s *Syncer) call(ctx context.Context, method string, peer netip.Addr, kind string, body []byte) ([]byte, error) {
	c := s.client
	if kind == "flows-dump" {
		c = s.bulk
	}
	return ha.Call(ctx, c, s.signer, s.opts.Key, method, s.peerURL(peer)+"/flowsync/"+kind, kind, body, s.maxResponse(kind))
}

// sender pushes batches to one peer, in order, until its context ends.
type sender struct {
	q      chan Batch
	cancel context.CancelFunc
}

// senders follows the live nodes: one sender per peer.
type senders struct {
	s   *Syncer
	ctx context.Context
	by  map[netip.Addr]*sender
}

// refresh starts a sender for each new peer and stops those of nodes
// that left.
func (ss *senders) refresh() {
	addrs, _ := ss.s.peers.PeerAddrs()
	live := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		live[a] = true
		if ss.by[a] == nil {
			ctx, cancel := context.WithCancel(ss.ctx)
			sd := &sender{q: make(chan Batch, queueLen), cancel: cancel}
			ss.by[a] = sd
			go ss.s.send(ctx, a, sd.q)
		}
	}
	for a, sd := range ss.by {
		if !live[a] {
			sd.cancel()
			delete(ss.by, a)
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
			ss.s.entries.WithLabelValues("sent", "dropped").Add(float64(b.N))
		}
	}
}

// flowLoop hands each batch of connection-table writes to every live
// peer's sender: a slow peer loses batches (counted), not the reader.
// The peer set is read at every batch, so a node that joined gets every
// batch from its first dump on.
func (s *Syncer) flowLoop(ctx context.Context, r FlowReader) {
	ss := &senders{s: s, ctx: ctx, by: map[netip.Addr]*sender{}}
	Batches(ctx, r, s.host.BackendAddrs, s.log, ss.hand)
}

func (s *Syncer) send(ctx context.Context, peer netip.Addr, q chan Batch) {
	for {
		var b Batch
		select {
		case <-ctx.Done():
			return
		case b = <-q:
		}
		if _, err := s.call(ctx, http.MethodPost, peer, "flows", b.Body); err != nil {
			s.entries.WithLabelValues("sent", "dropped").Add(float64(b.N))
			s.log.Debug("flow sync", "peer", peer, "err", err)
			continue
		}
		lag := loader.MonotonicNow() - b.Oldest
		s.lag.Observe(lag.Seconds())
		s.entries.WithLabelValues("sent", "ok").Add(float64(b.N))
	}
}
