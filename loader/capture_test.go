package loader

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/capture"
)

// readFrames reads frames until the capture has had none for a moment.
func readFrames(t *testing.T, c *capture.Capture) []capture.Frame {
	t.Helper()
	var out []capture.Frame
	for {
		c.SetDeadline(time.Now().Add(50 * time.Millisecond))
		fr, err := c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fr)
	}
}

func captureOn(t *testing.T, f *fixture, cf capture.Filter) *capture.Capture {
	t.Helper()
	c, err := capture.Start(f.d, cf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestCaptureFrames: a capture gets the frame as received and as sent,
// byte for byte, with its VIP and backend; other VIPs' frames are not
// taken; a snap length cuts the copy; the rate limit and a lapsed lease
// are counted or stop it; and closing turns it off.
func TestCaptureFrames(t *testing.T) {
	f := newFixture(t, seed)
	const vip4 = "10.0.0.100:80"
	c := captureOn(t, f, capture.Filter{VIPID: f.ids[vTCP], RX: true, TX: true, Snaplen: uint32(capture.SnapMax)})
	before := time.Now()
	in := pkt4(t, client4, vip4, synSeg)
	_, out := f.run(t, append([]byte(nil), in...))
	f.run(t, pkt4(t, client4, "10.0.0.100:53", udpDg)) // another VIP: not captured
	frames := readFrames(t, c)
	if len(frames) != 2 {
		t.Fatalf("captured %d frames, want 2 (rx and tx)", len(frames))
	}
	be := f.pick(vTCP, client4, vip4)
	want := ipip4To(vTCP, client4, vip4)(t, f, in)
	for i, w := range []struct {
		tx   bool
		data []byte
	}{{false, in}, {true, want}} {
		fr := frames[i]
		if fr.TX != w.tx || !bytes.Equal(fr.Data, w.data) || fr.Len != len(w.data) || fr.VIPID != f.ids[vTCP] || fr.Backend != be {
			t.Errorf("frame %d: tx=%v len %d vip %d backend %d\n got %x\nwant %x (tx=%v, backend %d)", i, fr.TX, fr.Len, fr.VIPID, fr.Backend, fr.Data, w.data, w.tx, be)
		}
		if fr.Time.Before(before.Add(-time.Second)) || fr.Time.After(time.Now().Add(time.Second)) {
			t.Errorf("frame %d: time %v, not now", i, fr.Time)
		}
	}
	if !bytes.Equal(out[:len(want)], want) {
		t.Errorf("capturing changed the frame sent")
	}
	if _, err := capture.Start(f.d, capture.Filter{VIPID: capture.AnyVIP, RX: true}); err == nil {
		t.Fatal("a second capture started while one runs")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	f.run(t, pkt4(t, client4, vip4, ackSeg))

	// Any VIP, received frames only, 60 bytes, one frame per second.
	c = captureOn(t, f, capture.Filter{VIPID: capture.AnyVIP, RX: true, Snaplen: 60, Rate: 1})
	f.run(t, pkt4(t, client4, "10.0.0.100:53", udpDg))
	f.run(t, pkt4(t, client4, vip4, ackSeg))
	frames = readFrames(t, c)
	if len(frames) != 1 || frames[0].TX || len(frames[0].Data) != 60 || frames[0].VIPID != f.ids[vUDP] {
		t.Fatalf("rate 1, snaplen 60: %d frames (%+v)", len(frames), frames)
	}
	st, err := f.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st[StatCaptureLimited].Packets != 1 || st[StatCaptureLost].Packets != 0 {
		t.Errorf("capture_limited %d, capture_lost %d; want 1, 0", st[StatCaptureLimited].Packets, st[StatCaptureLost].Packets)
	}

	// A lease that ran out: the process holding it died without closing.
	// The capture's own state is put back on, with its lease in the past.
	var cfg bpf.LbCaptureCfg
	if err := f.d.objs.Capture.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The rate limit is reset too, so that only the lease can refuse it.
	cpus, _ := ebpf.PossibleCPU()
	if err := f.d.objs.CaptureState.Update(uint32(0), make([]bpf.LbCaptureState, cpus), 0); err != nil {
		t.Fatal(err)
	}
	cfg.On, cfg.UntilNs, cfg.Rate = 1, uint64(MonotonicNow()-time.Second), 1000
	if err := f.d.objs.Capture.Update(uint32(0), cfg, 0); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(f.d.objs.CaptureEvents)
	if err != nil {
		t.Fatal(err)
	}
	f.run(t, pkt4(t, "192.0.2.99:1234", "10.0.0.100:53", udpDg))
	rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := rd.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("captured a frame after the lease ran out (%v)", err)
	}
	rd.Close()
	c, err = capture.Start(f.d, capture.Filter{VIPID: capture.AnyVIP, TX: true})
	if err != nil {
		t.Fatalf("a new capture after a lapsed lease: %v", err)
	}
	c.Close()
}

// TestCaptureSkipsEarlierFrames: frames a capture took but never read
// (it stopped at its count) are not handed to the next capture.
func TestCaptureSkipsEarlierFrames(t *testing.T) {
	f := newFixture(t, seed)
	first := captureOn(t, f, capture.Filter{VIPID: capture.AnyVIP, RX: true})
	f.run(t, pkt4(t, client4, "10.0.0.100:80", synSeg))
	f.run(t, pkt4(t, client4, "10.0.0.100:53", udpDg))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	next := captureOn(t, f, capture.Filter{VIPID: capture.AnyVIP, RX: true})
	in := pkt4(t, "192.0.2.77:5555", "10.0.0.100:80", synSeg)
	f.run(t, append([]byte(nil), in...))
	frames := readFrames(t, next)
	if len(frames) != 1 || !bytes.Equal(frames[0].Data, in) {
		t.Fatalf("the next capture read %d frames, want only its own one", len(frames))
	}
}

// TestCaptureIsExclusive: of captures started at once, exactly one
// runs, and the others are refused naming its pid; none of them can then
// switch the running one off. Before, Start read the lease and then wrote
// its own, so two starts could both succeed and steal each other's frames.
func TestCaptureIsExclusive(t *testing.T) {
	f := newFixture(t, seed)
	for round := range 100 {
		var (
			start = make(chan struct{})
			wg    sync.WaitGroup
			mu    sync.Mutex
			won   []*capture.Capture
			lost  []error
		)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				c, err := capture.Start(f.d, capture.Filter{VIPID: capture.AnyVIP, RX: true})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					lost = append(lost, err)
				} else {
					won = append(won, c)
				}
			}()
		}
		close(start)
		wg.Wait()
		for _, c := range won[min(1, len(won)):] {
			c.Close()
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d captures started at once, want 1 (refused: %v)", round, len(won), lost)
		}
		for _, err := range lost {
			// The winner names itself once it has written its pid.
			pid := fmt.Sprintf("a capture is already running (pid %d)", os.Getpid())
			if err.Error() != pid && err.Error() != "a capture is already running (starting)" {
				t.Fatalf("round %d: refused with %q, want %q", round, err, pid)
			}
		}
		_, err := capture.Start(f.d, capture.Filter{VIPID: capture.AnyVIP, RX: true})
		if want := fmt.Sprintf("a capture is already running (pid %d)", os.Getpid()); err == nil || err.Error() != want {
			t.Fatalf("round %d: a start while one runs: %v, want %q", round, err, want)
		}
		if err := won[0].Close(); err != nil {
			t.Fatal(err)
		}
	}
}
