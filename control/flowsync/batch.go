package flowsync

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/sluicelb/sluice/loader"
)

// Batch is a run of connection-table writes, marshalled for a peer.
type Batch struct {
	Body   []byte
	N      int
	Oldest time.Duration // monotonic time of the oldest write in the batch
}

// Batches reads connection-table writes from r until ctx ends (which
// closes r) or r is closed, and hands them on in batches: at most
// BatchMax entries, and no entry waits more than batchWait. addrs maps
// backend indexes to addresses at each batch. hand must not block: the
// reader is what every peer depends on.
func Batches(ctx context.Context, r FlowReader, addrs func() map[uint32]netip.Addr, log *slog.Logger, hand func(Batch)) {
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	var pending []loader.Flow
	var oldest time.Duration
	var deadline time.Time // when the pending batch must go: its first entry + batchWait
	flush := func() {
		if len(pending) == 0 {
			return
		}
		es := Entries(addrs(), pending)
		pending = pending[:0]
		hand(Batch{Body: MarshalFlows(es), N: len(es), Oldest: oldest})
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
			log.Warn("flow events", "err", err)
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
