package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/loader/capture"
)

func captureCommand() *cli.Command {
	return &cli.Command{
		Name:  "capture",
		Usage: "write the frames the data plane handles, as received and as sent (XDP_TX never reaches tcpdump), to a pcap or pcapng file",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "iface", Usage: "interface the daemon's data plane is attached to", Required: true},
			&cli.StringFlag{Name: "pin-root", Value: loader.DefaultPinRoot, Usage: "bpffs directory the daemon pins under"},
			&cli.StringFlag{Name: "vip", Usage: "only this VIP's frames (ADDR:PORT/PROTO; default: every VIP)"},
			&cli.StringFlag{Name: "backend", Usage: "only frames to this backend ADDR (with --vip: its entry in that VIP)"},
			&cli.StringFlag{Name: "dir", Value: "both", Usage: "rx (as received), tx (as sent, after the rewrite) or both"},
			&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Usage: "stop after N frames (default: until interrupted or --duration)"},
			&cli.DurationFlag{Name: "duration", Usage: "stop after this long"},
			&cli.UintFlag{Name: "snaplen", Value: capture.DefaultSnaplen, Usage: fmt.Sprintf("bytes kept of each frame, at most %d", capture.SnapMax)},
			&cli.UintFlag{Name: "rate", Value: capture.DefaultRate, Usage: "at most this many frames per second per CPU (the rest are counted, not copied)"},
			&cli.StringFlag{Name: "write", Aliases: []string{"w"}, Usage: "FILE.pcap, FILE.pcapng (with direction and VIP/backend per frame) or - (pcap to stdout)", Required: true},
		},
		Action: runCapture,
	}
}

// captureJob is a parsed `sluice capture`.
type captureJob struct {
	filter   capture.Filter
	backends map[uint32]bool // with several entries for --backend: filtered here
	names    map[uint32]string
	vips     map[uint32]string
	count    int
	duration time.Duration
	out      string
}

func runCapture(c *cli.Context) error {
	job, p, err := parseCapture(c)
	if err != nil {
		return err
	}
	defer p.Close()
	before, err := p.Stats()
	if err != nil {
		return err
	}
	w, commit, err := openCaptureOutput(job.out, c.App.Writer)
	if err != nil {
		return err
	}
	defer commit(false)
	sink, err := newFrameSink(w, job, c.String("iface"))
	if err != nil {
		return err
	}
	cp, err := capture.Start(p, job.filter)
	if err != nil {
		return err
	}
	n, rx, err := job.run(c.Context, cp, sink)
	if cerr := cp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = sink.flush()
	}
	if err == nil {
		err = commit(true)
	}
	if err != nil {
		return err
	}
	after, _ := p.Stats()
	fmt.Fprintf(c.App.ErrWriter, "%d frames captured (%d rx, %d tx) to %s; %d over the rate limit, %d lost (ring buffer full)\n",
		n, rx, n-rx, job.out, after[loader.StatCaptureLimited].Packets-before[loader.StatCaptureLimited].Packets,
		after[loader.StatCaptureLost].Packets-before[loader.StatCaptureLost].Packets)
	return nil
}

// parseCapture checks every flag, naming the bad one, and resolves the
// VIP and backend in the pinned data plane.
func parseCapture(c *cli.Context) (*captureJob, *loader.Pinned, error) {
	job := &captureJob{count: c.Int("count"), duration: c.Duration("duration"), out: c.String("write"),
		filter: capture.Filter{VIPID: capture.AnyVIP, Snaplen: uint32(c.Uint("snaplen")), Rate: uint32(c.Uint("rate"))}}
	switch c.String("dir") {
	case "rx":
		job.filter.RX = true
	case "tx":
		job.filter.TX = true
	case "both":
		job.filter.RX, job.filter.TX = true, true
	default:
		return nil, nil, fmt.Errorf("--dir %q: want rx, tx or both", c.String("dir"))
	}
	switch {
	case job.count < 0:
		return nil, nil, fmt.Errorf("--count %d: must not be negative", job.count)
	case c.Uint("snaplen") < 1 || c.Uint("snaplen") > uint(capture.SnapMax):
		return nil, nil, fmt.Errorf("--snaplen %d: want 1-%d", c.Uint("snaplen"), capture.SnapMax)
	case c.Uint("rate") < 1 || c.Uint("rate") > 1<<31:
		return nil, nil, fmt.Errorf("--rate %d: want at least 1", c.Uint("rate"))
	case job.duration < 0:
		return nil, nil, fmt.Errorf("--duration %v: must not be negative", job.duration)
	case job.out == "":
		return nil, nil, fmt.Errorf("--write: give a file (or - for stdout)")
	}
	p, err := loader.OpenPinned(c.String("iface"), c.String("pin-root"))
	if err != nil {
		return nil, nil, err
	}
	if err := job.resolve(p, c.String("vip"), c.String("backend")); err != nil {
		p.Close()
		return nil, nil, err
	}
	return job, p, nil
}

// resolve turns --vip and --backend into the data plane's VIP id and
// backend indices, and names every index for the frames' comments.
func (job *captureJob) resolve(p *loader.Pinned, vip, backend string) error {
	vips, err := p.VIPs()
	if err != nil {
		return err
	}
	bes, err := p.Backends()
	if err != nil {
		return err
	}
	job.vips, job.names = map[uint32]string{}, map[uint32]string{}
	for k, v := range vips {
		job.vips[v.ID] = k.String()
	}
	for idx, b := range bes {
		job.names[idx] = b.Addr.String()
	}
	if vip != "" {
		k, err := state.ParseVIPKey(vip)
		if err != nil {
			return fmt.Errorf("--vip: %w", err)
		}
		v, ok := vips[reconcile.DataKey(k)]
		if !ok {
			return fmt.Errorf("--vip %s: no such VIP in the data plane", vip)
		}
		job.filter.VIPID = v.ID
	}
	if backend == "" {
		return nil
	}
	a, err := netip.ParseAddr(backend)
	if err != nil {
		return fmt.Errorf("--backend %q: not an IP address", backend)
	}
	job.backends = map[uint32]bool{}
	for idx, b := range bes {
		if b.Addr == a.Unmap() && (job.filter.VIPID == capture.AnyVIP || b.VIPID == job.filter.VIPID) {
			job.backends[idx] = true
		}
	}
	switch len(job.backends) {
	case 0:
		if vip != "" {
			return fmt.Errorf("--backend %s: no such backend in the data plane for --vip %s", backend, vip)
		}
		return fmt.Errorf("--backend %s: no such backend in the data plane", backend)
	case 1:
		for idx := range job.backends {
			job.filter.Backend = idx // one entry: the data plane filters
		}
	}
	return nil
}

// run copies frames to sink until the count, the duration or ctx ends it.
func (job *captureJob) run(ctx context.Context, cp *capture.Capture, sink *frameSink) (n, rx int, err error) {
	if job.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, job.duration)
		defer cancel()
	}
	stop := context.AfterFunc(ctx, func() { cp.Close() })
	defer stop()
	for job.count == 0 || n < job.count {
		fr, err := cp.Read()
		if errors.Is(err, os.ErrClosed) {
			return n, rx, nil
		}
		if err != nil {
			return n, rx, err
		}
		if job.backends != nil && !job.backends[fr.Backend] {
			continue
		}
		if err := sink.write(fr, job); err != nil {
			return n, rx, err
		}
		n++
		if !fr.TX {
			rx++
		}
	}
	return n, rx, nil
}

// openCaptureOutput opens the output: stdout for "-", else a temporary
// file beside it that commit(true) renames into place, so the file
// appears whole or not at all.
func openCaptureOutput(path string, stdout io.Writer) (io.Writer, func(ok bool) error, error) {
	if path == "-" {
		return stdout, func(bool) error { return nil }, nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, nil, fmt.Errorf("--write %s: %w", path, err)
	}
	done := false
	return f, func(ok bool) error {
		if done {
			return nil
		}
		done = true
		err := f.Close()
		if ok && err == nil {
			// The file keeps CreateTemp's mode, 0600: frames carry
			// whatever the clients sent.
			err = os.Rename(f.Name(), path)
		}
		if !ok || err != nil {
			os.Remove(f.Name())
		}
		return err
	}, nil
}

// frameSink writes frames as pcap, or as pcapng with each frame's
// direction and a comment naming its VIP and backend.
type frameSink struct {
	pcap   *pcapgo.Writer
	ng     *pcapgo.NgWriter
	buf    *bufio.Writer
	stream bool // flush every frame (to a pipe)
}

func newFrameSink(w io.Writer, job *captureJob, iface string) (*frameSink, error) {
	if strings.HasSuffix(job.out, ".pcapng") {
		ng, err := pcapgo.NewNgWriterInterface(w, pcapgo.NgInterface{Name: iface, Description: "sluice XDP data plane",
			LinkType: layers.LinkTypeEthernet, SnapLength: job.filter.Snaplen}, pcapgo.DefaultNgWriterOptions)
		if err != nil {
			return nil, fmt.Errorf("write pcapng header: %w", err)
		}
		return &frameSink{ng: ng}, nil
	}
	s := &frameSink{buf: bufio.NewWriter(w), stream: job.out == "-"}
	s.pcap = pcapgo.NewWriterNanos(s.buf)
	if err := s.pcap.WriteFileHeader(job.filter.Snaplen, layers.LinkTypeEthernet); err != nil {
		return nil, fmt.Errorf("write pcap header: %w", err)
	}
	return s, s.flushIfStream()
}

func (s *frameSink) write(fr capture.Frame, job *captureJob) error {
	ci := gopacket.CaptureInfo{Timestamp: fr.Time, CaptureLength: len(fr.Data), Length: fr.Len}
	if s.pcap != nil {
		if err := s.pcap.WritePacket(ci, fr.Data); err != nil {
			return err
		}
		return s.flushIfStream()
	}
	dir, flag := "rx", pcapgo.NgEpbFlagDirectionInbound
	if fr.TX {
		dir, flag = "tx", pcapgo.NgEpbFlagDirectionOutbound
	}
	be := job.names[fr.Backend]
	if fr.Backend == 0 {
		be = "none (dropped)"
	}
	return s.ng.WritePacketWithOptions(ci, fr.Data, pcapgo.NgPacketOptions{
		Flags:    &pcapgo.NgEpbFlags{Direction: flag},
		Comments: []string{fmt.Sprintf("%s vip %s backend %s", dir, job.vips[fr.VIPID], be)},
	})
}

func (s *frameSink) flushIfStream() error {
	if s.stream {
		return s.buf.Flush()
	}
	return nil
}

func (s *frameSink) flush() error {
	if s.ng != nil {
		return s.ng.Flush()
	}
	return s.buf.Flush()
}
