package flowsync

import (
	"context"
	"net/netip"
	"time"
)

// joinPatience bounds how long a join keeps asking one peer. A peer
// refuses this node until it has seen this node's key in the store (its
// listener admits live nodes only), and a node that died keeps its key
// until its lease expires; neither may hold the announcement for ever.
const joinPatience = 10 * time.Second

// joinRetry paces the join's attempts.
const joinRetry = 100 * time.Millisecond

// Joined is what a finished join did, for the daemon's event.
type Joined struct {
	From    []netip.Addr // peers whose tables were copied
	GaveUp  []netip.Addr // peers that did not answer within joinPatience
	Applied int
	Unknown int // entries for backends this node does not know
	Took    time.Duration
}

// join copies every peer's table once the node list is known, then
// marks the syncer copied; OnJoined (if set) is told what it did.
func (s *Syncer) join(ctx context.Context) {
	start := time.Now()
	var addrs []netip.Addr
	for {
		var known bool
		if addrs, known = s.peers.PeerAddrs(); known {
			break
		}
		if !sleep(ctx, joinRetry) {
			return
		}
	}
	var j Joined
	pending := map[netip.Addr]error{}
	for _, a := range addrs {
		pending[a.Unmap()] = nil
	}
	// Every peer at once, each attempt within what is left of the
	// patience: one silent peer (stopped, or its answer lost) holds the
	// join for joinPatience, not for a copy's timeout per peer.
	pctx, cancel := context.WithDeadline(ctx, start.Add(joinPatience))
	defer cancel()
	for len(pending) > 0 {
		for _, c := range s.copyAll(pctx, pending) {
			switch {
			case c.err == nil:
				j.From, j.Applied, j.Unknown = append(j.From, c.peer), j.Applied+c.applied, j.Unknown+c.unknown
				delete(pending, c.peer)
			case time.Since(start) > joinPatience:
				s.log.Warn("flow sync: gave up copying a peer's table", "peer", c.peer, "err", c.err)
				j.GaveUp = append(j.GaveUp, c.peer)
				delete(pending, c.peer)
			}
		}
		if ctx.Err() != nil || (len(pending) > 0 && !sleep(ctx, joinRetry)) {
			return
		}
	}
	j.Took = time.Since(start)
	s.copied.Store(true)
	s.log.Info("flow sync: peers' tables copied", "from", j.From, "gave_up", j.GaveUp, "entries", j.Applied, "unknown", j.Unknown, "took", j.Took)
	if s.OnJoined != nil {
		s.OnJoined(j)
	}
}

// copied is one attempt at a peer's table.
type copied struct {
	peer             netip.Addr
	applied, unknown int
	err              error
}

// copyAll tries every pending peer's table at once, within ctx.
func (s *Syncer) copyAll(ctx context.Context, pending map[netip.Addr]error) []copied {
	out := make(chan copied, len(pending))
	for a := range pending {
		go func() {
			applied, unknown, err := s.copyFrom(ctx, a)
			out <- copied{a, applied, unknown, err}
		}()
	}
	res := make([]copied, 0, len(pending))
	for range pending {
		res = append(res, <-out)
	}
	return res
}

// copyFrom copies one peer's whole table.
func (s *Syncer) copyFrom(ctx context.Context, a netip.Addr) (applied, unknown int, err error) {
	return s.link.Copy(ctx, netip.AddrPortFrom(a, s.opts.Port))
}

// sleep waits d unless ctx ends first (false).
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
