package flowsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"time"

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

type batch struct {
	body   []byte
	n      int
	oldest time.Duration // monotonic time of the oldest write in the batch
}

// sender pushes batches to one peer, in order, until its context ends.
type sender struct {
	q      chan batch
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
			sd := &sender{q: make(chan batch, queueLen), cancel: cancel}
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
func (ss *senders) hand(b batch) {
	ss.refresh()
	for _, sd := range ss.by {
		select {
		case sd.q <- b:
		default:
			ss.s.entries.WithLabelValues("sent", "dropped").Add(float64(b.n))
		}
	}
}

// flowLoop reads connection-table writes, batches them and hands each
// batch to every live peer's sender: a slow peer loses batches
// (counted), not the reader. The peer set is read at every batch, so a
// node that joined gets every batch from its first dump on.
func (s *Syncer) flowLoop(ctx context.Context, r FlowReader) {
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	ss := &senders{s: s, ctx: ctx, by: map[netip.Addr]*sender{}}
	var pending []loader.Flow
	var oldest time.Duration
	var deadline time.Time // when the pending batch must go
	flush := func() {
		if len(pending) == 0 {
			return
		}
		es := Entries(s.host.BackendAddrs(), pending)
		pending = pending[:0]
		ss.hand(batch{body: ha.MarshalFlows(es), n: len(es), oldest: oldest})
	}
	for {
		if len(pending) == 0 {
			deadline = time.Time{}
		}
		ev, err := r.Read(deadline)
		switch {
		case errors.Is(err, loader.ErrClosed):
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			flush()
			continue
		case err != nil:
			s.log.Warn("flow events", "err", err)
			continue
		}
		if len(pending) == 0 {
			oldest = ev.At
			deadline = time.Now().Add(batchWait)
		}
		pending = append(pending, ev.Flow)
		if len(pending) >= batchMax {
			flush()
		}
	}
}

func (s *Syncer) send(ctx context.Context, peer netip.Addr, q chan batch) {
	for {
		var b batch
		select {
		case <-ctx.Done():
			return
		case b = <-q:
		}
		if _, err := s.call(ctx, http.MethodPost, peer, "flows", b.body); err != nil {
			s.entries.WithLabelValues("sent", "dropped").Add(float64(b.n))
			s.log.Debug("flow sync", "peer", peer, "err", err)
			continue
		}
		lag := loader.MonotonicNow() - b.oldest
		s.lag.Observe(lag.Seconds())
		s.entries.WithLabelValues("sent", "ok").Add(float64(b.n))
	}
}
