// Package capture copies the frames the data plane handles for a VIP or
// a backend, as received and as sent after the rewrite: it holds the
// data plane's capture as a renewed lease, and reads the ring buffer the
// XDP program fills (sluice capture).
package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/layout"
)

// Capture limits and defaults (sluice.h: SLUICE_CAPTURE_*).
const (
	AnyVIP          = 0xffffffff
	SnapMax         = len(bpf.LbCaptureRec{}.Data)
	DefaultSnaplen  = 256
	DefaultRate     = 10000 // frames per second per CPU
	captureLease    = 2 * time.Second
	captureRenewals = 4 // per lease
)

// LockDir holds a lock file per data plane, named by its capture map's
// ID: a capture holds it exclusively for its life (flock), and the kernel
// lets go of it when the process dies, so that of two captures started
// at once exactly one runs.
const LockDir = "/run/sluice/capture"

// Filter chooses the frames a capture copies.
type Filter struct {
	VIPID   uint32 // the VIP's id, or AnyVIP
	Backend uint32 // a backend index; 0: any
	RX, TX  bool   // as received, as sent after the rewrite
	Snaplen uint32 // bytes kept of each frame (default DefaultSnaplen)
	Rate    uint32 // frames per second per CPU (default DefaultRate)
}

func (f *Filter) check() error {
	if f.Snaplen == 0 {
		f.Snaplen = DefaultSnaplen
	}
	if f.Rate == 0 {
		f.Rate = DefaultRate
	}
	switch {
	case !f.RX && !f.TX:
		return fmt.Errorf("capture: no direction (rx, tx or both)")
	case f.Snaplen > uint32(SnapMax):
		return fmt.Errorf("snaplen %d: at most %d", f.Snaplen, SnapMax)
	case f.Backend >= layout.MaxBackends:
		return fmt.Errorf("capture: backend index %d out of range", f.Backend)
	}
	return nil
}

// Frame is one frame as the data plane received or sent it.
type Frame struct {
	Time    time.Time
	Len     int    // the frame's length on the wire
	Data    []byte // its first Snaplen bytes
	VIPID   uint32
	Backend uint32 // 0: none (dropped for want of a usable backend)
	TX      bool   // false: as received
	Ifindex int
}

// monotonic is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns and, within
// a tick, of bpf_ktime_get_coarse_ns.
func monotonic() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// Capture is a running capture. It holds the data plane's capture as a
// lease it renews; if the process dies, the capture stops by itself
// within captureLease.
type Capture struct {
	cfg     *ebpf.Map
	rd      *ringbuf.Reader
	raw     bpf.LbCaptureCfg
	wall0   time.Time
	mono0   time.Duration
	lock    *os.File // LockDir's file, held exclusively until Close
	stop    chan struct{}
	renewed sync.WaitGroup
	once    sync.Once
}

// Source is a data plane to capture from (a loader.Pinned beside the
// daemon, or a loader.Datapath).
type Source interface {
	CaptureMaps() (cfg, state, events *ebpf.Map)
}

// Start turns capture on with filter f. It refuses while another process
// holds the capture.
func Start(src Source, f Filter) (*Capture, error) {
	cfg, state, events := src.CaptureMaps()
	if err := f.check(); err != nil {
		return nil, err
	}
	lock, err := lockCapture(cfg)
	if err != nil {
		return nil, err
	}
	c, err := start(cfg, state, events, f)
	if err != nil {
		lock.Close()
		return nil, err
	}
	c.lock = lock
	c.renewed.Add(1)
	go c.keep()
	return c, nil
}

// lockCapture takes cfg's lock file in LockDir, or says who holds it.
func lockCapture(cfg *ebpf.Map) (*os.File, error) {
	info, err := cfg.Info()
	if err != nil {
		return nil, fmt.Errorf("capture map: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return nil, errors.New("capture map: the kernel gives no map IDs")
	}
	if err := os.MkdirAll(LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("capture lock: %w", err)
	}
	path := filepath.Join(LockDir, fmt.Sprintf("map-%d.lock", id))
	lock, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("capture lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("capture lock %s: %w", path, err)
		}
		return nil, busy(path)
	}
	// Who holds it, for the next one's message.
	if err := lock.Truncate(0); err == nil {
		lock.WriteString(strconv.Itoa(os.Getpid()))
	}
	return lock, nil
}

// busy is the refusal while another capture holds the lock at path: it
// names the holder's pid once the holder has written it.
func busy(path string) error {
	b, _ := os.ReadFile(path)
	if pid, err := strconv.Atoi(string(b)); err == nil {
		return fmt.Errorf("a capture is already running (pid %d)", pid)
	}
	return errors.New("a capture is already running (starting)")
}

// start turns capture on, under the lock.
func start(cfg, state, events *ebpf.Map, f Filter) (*Capture, error) {
	var cur bpf.LbCaptureCfg
	if err := cfg.Lookup(uint32(0), &cur); err != nil {
		return nil, fmt.Errorf("read capture state: %w", err)
	}
	// Held by a process that died less than a lease ago, or by a binary
	// from before the lock.
	if cur.On != 0 && time.Duration(cur.UntilNs) > monotonic() {
		return nil, fmt.Errorf("a capture is already running (pid %d)", cur.Owner)
	}
	// A new capture starts its rate limit afresh, on every CPU.
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count CPUs: %w", err)
	}
	if err := state.Update(uint32(0), make([]bpf.LbCaptureState, cpus), ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("reset capture rate limit: %w", err)
	}
	rd, err := ringbuf.NewReader(events)
	if err != nil {
		return nil, fmt.Errorf("open capture ring buffer: %w", err)
	}
	var dirs uint32
	if f.RX {
		dirs |= uint32(bpf.LbSluiceCaptureDirSLUICE_CAPTURE_RX)
	}
	if f.TX {
		dirs |= uint32(bpf.LbSluiceCaptureDirSLUICE_CAPTURE_TX)
	}
	c := &Capture{cfg: cfg, rd: rd, stop: make(chan struct{}), wall0: time.Now(), mono0: monotonic(),
		raw: bpf.LbCaptureCfg{On: 1, VipId: f.VIPID, Backend: f.Backend, Dirs: dirs, Snaplen: f.Snaplen, Rate: f.Rate,
			Owner: uint32(os.Getpid()), Session: rand.Uint32()}}
	c.drain()
	if err := c.renew(); err != nil {
		rd.Close()
		return nil, err
	}
	return c, nil
}

func (c *Capture) renew() error {
	c.raw.UntilNs = uint64(monotonic() + captureLease)
	if err := c.cfg.Update(uint32(0), c.raw, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write capture state: %w", err)
	}
	return nil
}

// keep renews the lease until Close.
func (c *Capture) keep() {
	defer c.renewed.Done()
	t := time.NewTicker(captureLease / captureRenewals)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.renew() // a failed renewal lets the lease run out: capture stops
		}
	}
}

// drain discards what earlier captures left in the ring buffer.
func (c *Capture) drain() {
	c.rd.SetDeadline(time.Now())
	for {
		if _, err := c.rd.Read(); err != nil {
			break
		}
	}
	c.rd.SetDeadline(time.Time{})
}

// SetDeadline makes Read return os.ErrDeadlineExceeded once t passes
// without a frame (the zero time: no deadline).
func (c *Capture) SetDeadline(t time.Time) { c.rd.SetDeadline(t) }

// Read blocks until the next frame of this capture; after Close it
// returns os.ErrClosed.
func (c *Capture) Read() (Frame, error) {
	for {
		rec, err := c.rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return Frame{}, os.ErrClosed
		}
		if err != nil {
			return Frame{}, fmt.Errorf("read capture ring buffer: %w", err)
		}
		fr, session, err := parseRec(rec.RawSample, c.wall0.Add(-c.mono0))
		if err != nil || session == c.raw.Session {
			return fr, err
		}
		// A frame an earlier capture took after its last read: skip it.
	}
}

// parseRec decodes one record (struct capture_rec); epoch is the
// wall time of CLOCK_MONOTONIC's zero. The record comes from the kernel,
// but its lengths are checked before they are used.
func parseRec(raw []byte, epoch time.Time) (Frame, uint32, error) {
	var rec bpf.LbCaptureRec
	if n := binary.Size(rec); len(raw) < n {
		return Frame{}, 0, fmt.Errorf("capture record of %d bytes, want %d", len(raw), n)
	}
	if _, err := binary.Decode(raw, binary.NativeEndian, &rec); err != nil {
		return Frame{}, 0, fmt.Errorf("capture record: %w", err)
	}
	if rec.Caplen > uint32(len(rec.Data)) || rec.Caplen > rec.Len {
		return Frame{}, 0, fmt.Errorf("capture record: %d bytes captured of %d", rec.Caplen, rec.Len)
	}
	return Frame{
		Time: epoch.Add(time.Duration(rec.TimeNs)), Len: int(rec.Len), Data: append([]byte(nil), rec.Data[:rec.Caplen]...),
		VIPID: rec.VipId, Backend: rec.Backend, TX: rec.Dir == uint8(bpf.LbSluiceCaptureDirSLUICE_CAPTURE_TX), Ifindex: int(rec.Ifindex),
	}, rec.Session, nil
}

// Close turns capture off and ends Read.
func (c *Capture) Close() error {
	var err error
	c.once.Do(func() {
		close(c.stop)
		c.renewed.Wait()
		c.raw.On, c.raw.UntilNs = 0, 0
		err = c.cfg.Update(uint32(0), c.raw, ebpf.UpdateAny)
		if err != nil {
			err = fmt.Errorf("turn capture off: %w", err)
		}
		err = errors.Join(err, c.rd.Close(), c.lock.Close()) // the lock last: capture is off
	})
	return err
}
