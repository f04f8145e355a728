package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

// FlowEvent is a connection-table write the data plane reported (with
// Config.FlowSync on): a new flow or a re-steered one.
type FlowEvent struct {
	Flow Flow
	// At is when the entry was written, on the monotonic clock
	// (CLOCK_MONOTONIC, as MonotonicNow reads it).
	At time.Duration
}

// MonotonicNow reads the clock FlowEvent.At is on.
func MonotonicNow() time.Duration { return time.Duration(clockNano(unix.CLOCK_MONOTONIC)) }

func clockNano(id int32) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(id, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// ErrClosed is returned by FlowEventReader.Read after Close.
var ErrClosed = errors.New("flow event reader closed")

// FlowEventReader reads reported connection-table writes.
type FlowEventReader struct {
	r *ringbuf.Reader
}

// FlowEvents opens a reader of the data plane's flow events. One reader
// at a time: events are consumed.
func (d *Datapath) FlowEvents() (*FlowEventReader, error) {
	r, err := ringbuf.NewReader(d.objs.FlowEvents)
	if err != nil {
		return nil, fmt.Errorf("open flow event ring buffer: %w", err)
	}
	return &FlowEventReader{r: r}, nil
}

// Read waits for the next event until deadline (zero: no deadline); it
// returns os.ErrDeadlineExceeded when none came, and ErrClosed after Close.
func (r *FlowEventReader) Read(deadline time.Time) (FlowEvent, error) {
	r.r.SetDeadline(deadline)
	rec, err := r.r.Read()
	switch {
	case errors.Is(err, ringbuf.ErrClosed):
		return FlowEvent{}, ErrClosed
	case errors.Is(err, os.ErrDeadlineExceeded):
		return FlowEvent{}, err
	case err != nil:
		return FlowEvent{}, fmt.Errorf("read flow event: %w", err)
	}
	var e bpf.LbFlowEvent
	if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &e); err != nil {
		return FlowEvent{}, fmt.Errorf("decode flow event of %d bytes: %w", len(rec.RawSample), err)
	}
	f := flowFromRaw(e.Key, bpf.LbFlowState{Backend: e.Backend})
	return FlowEvent{Flow: f, At: time.Duration(e.TimeNs)}, nil
}

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *FlowEventReader) Close() error { return r.r.Close() }

// MonotonicCoarseNow reads the clock connection-table entries age by
// (bpf_ktime_get_coarse_ns), for entries written from user space.
func MonotonicCoarseNow() uint64 { return uint64(clockNano(unix.CLOCK_MONOTONIC_COARSE)) }
