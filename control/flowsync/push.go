package flowsync

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/loader"
)

// call sends a signed request of kind to peer and returns the verified
// answer, read within its bound.
func (s *Syncer) call(ctx context.Context, method string, peer netip.Addr, kind string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.peerURL(peer)+"/flowsync/"+kind, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	s.signer.Sign(req.Header, kind, body)
	c := s.client
	if kind == "flows-dump" {
		c = s.bulk
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := ha.ReadAnswer(resp.Body, s.maxResponse(kind))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, kind, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, kind, resp.Status, bytes.TrimSpace(out))
	}
	if err := ha.VerifyResponse(s.opts.Key, req.Header, resp.Header, kind, out); err != nil {
		return nil, err
	}
	return out, nil
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
