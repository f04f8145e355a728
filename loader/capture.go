package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/pin"
)

// Capture limits and defaults (sluice.h: SLUICE_CAPTURE_*).
const (
	CaptureAnyVIP   = 0xffffffff
	CaptureSnapMax  = len(bpf.LbCaptureRec{}.Data)
	DefaultSnaplen  = 256
	DefaultRate     = 10000 // frames per second per CPU
	captureLease    = 2 * time.Second
	captureRenewals = 4 // per lease
)

// CaptureFilter chooses the frames a capture copies.
type CaptureFilter struct {
	VIPID   uint32 // the VIP's id, or CaptureAnyVIP
	Backend uint32 // a backend index; 0: any
	RX, TX  bool   // as received, as sent after the rewrite
	Snaplen uint32 // bytes kept of each frame (default DefaultSnaplen)
	Rate    uint32 // frames per second per CPU (default DefaultRate)
}

func (f *CaptureFilter) check() error {
	if f.Snaplen == 0 {
		f.Snaplen = DefaultSnaplen
	}
	if f.Rate == 0 {
		f.Rate = DefaultRate
	}
	switch {
	case !f.RX && !f.TX:
		return fmt.Errorf("capture: no direction (rx, tx or both)")
	case f.Snaplen > uint32(CaptureSnapMax):
		return fmt.Errorf("snaplen %d: at most %d", f.Snaplen, CaptureSnapMax)
	case f.Backend >= MaxBackends:
		return fmt.Errorf("capture: backend index %d out of range", f.Backend)
	}
	return nil
}

// CapturedFrame is one frame as the data plane received or sent it.
type CapturedFrame struct {
	Time    time.Time
	Len     int    // the frame's length on the wire
	Data    []byte // its first Snaplen bytes
	VIPID   uint32
	Backend uint32 // 0: none (dropped for want of a usable backend)
	TX      bool   // false: as received
	Ifindex int
}

// Pinned is a read-only view of the data plane a daemon pinned for an
// interface, for tools that run beside the daemon (sluice capture): its
// VIPs, backends and counters, and packet capture.
type Pinned struct {
	d                  *Datapath
	cfg, state, events *ebpf.Map
}

// OpenPinned opens the data plane pinned for iface in this network
// namespace under pinRoot.
func OpenPinned(iface, pinRoot string) (*Pinned, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", iface, err)
	}
	dir, err := pin.Dir(pinRoot, "", ifi)
	if err != nil {
		return nil, err
	}
	p := &Pinned{d: &Datapath{}}
	err = pin.OpenMaps(dir, []pin.Map{{Name: bpf.LbMapVips, To: &p.d.objs.Vips}, {Name: bpf.LbMapBackends, To: &p.d.objs.Backends},
		{Name: bpf.LbMapStats, To: &p.d.objs.Stats}, {Name: bpf.LbMapCapture, To: &p.cfg},
		{Name: bpf.LbMapCaptureState, To: &p.state}, {Name: bpf.LbMapCaptureEvents, To: &p.events}})
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no sluice data plane with capture is pinned for %s under %s (is the daemon running, and this version?)", iface, pinRoot)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// VIPs reads the VIPs, with their ids.
func (p *Pinned) VIPs() (map[VIPKey]VIP, error) { return p.d.VIPs() }

// Backends reads the backend entries by index.
func (p *Pinned) Backends() (map[uint32]Backend, error) { return p.d.Backends() }

// Stats reads the global counters.
func (p *Pinned) Stats() (map[Stat]Counter, error) { return p.d.Stats() }

// Close releases the maps.
func (p *Pinned) Close() error {
	var errs []error
	for _, m := range []*ebpf.Map{p.d.objs.Vips, p.d.objs.Backends, p.d.objs.Stats, p.cfg, p.state, p.events} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
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
	stop    chan struct{}
	renewed sync.WaitGroup
	once    sync.Once
}

// StartCapture turns capture on with filter f. It refuses while another
// process holds the capture.
func (p *Pinned) StartCapture(f CaptureFilter) (*Capture, error) {
	return startCapture(p.cfg, p.state, p.events, f)
}

// StartCapture captures from this process's data plane (packet tests).
func (d *Datapath) StartCapture(f CaptureFilter) (*Capture, error) {
	return startCapture(d.objs.Capture, d.objs.CaptureState, d.objs.CaptureEvents, f)
}

func startCapture(cfg, state, events *ebpf.Map, f CaptureFilter) (*Capture, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	var cur bpf.LbCaptureCfg
	if err := cfg.Lookup(uint32(0), &cur); err != nil {
		return nil, fmt.Errorf("read capture state: %w", err)
	}
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
	c.renewed.Add(1)
	go c.keep()
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
func (c *Capture) Read() (CapturedFrame, error) {
	for {
		rec, err := c.rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return CapturedFrame{}, os.ErrClosed
		}
		if err != nil {
			return CapturedFrame{}, fmt.Errorf("read capture ring buffer: %w", err)
		}
		fr, session, err := parseCaptureRec(rec.RawSample, c.wall0.Add(-c.mono0))
		if err != nil || session == c.raw.Session {
			return fr, err
		}
		// A frame an earlier capture took after its last read: skip it.
	}
}

// parseCaptureRec decodes one record (struct capture_rec); epoch is the
// wall time of CLOCK_MONOTONIC's zero. The record comes from the kernel,
// but its lengths are checked before they are used.
func parseCaptureRec(raw []byte, epoch time.Time) (CapturedFrame, uint32, error) {
	var rec bpf.LbCaptureRec
	if n := binary.Size(rec); len(raw) < n {
		return CapturedFrame{}, 0, fmt.Errorf("capture record of %d bytes, want %d", len(raw), n)
	}
	if _, err := binary.Decode(raw, binary.NativeEndian, &rec); err != nil {
		return CapturedFrame{}, 0, fmt.Errorf("capture record: %w", err)
	}
	if rec.Caplen > uint32(len(rec.Data)) || rec.Caplen > rec.Len {
		return CapturedFrame{}, 0, fmt.Errorf("capture record: %d bytes captured of %d", rec.Caplen, rec.Len)
	}
	return CapturedFrame{
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
		err = errors.Join(err, c.rd.Close())
	})
	return err
}
