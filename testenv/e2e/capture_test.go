package e2e

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// TestCapture: `sluice capture` beside a running daemon writes the
// frames the data plane handles for a VIP, as received (TCP to the VIP)
// and as sent (IPIP to a backend, the same TCP inside), to a pcapng file
// with each frame's direction and backend, and, filtered to one backend's
// sent frames, to a pcap file; gopacket and tcpdump both read them back.
func TestCapture(t *testing.T) {
	lab, d := labWithDaemon(t, 2)
	d.mustCLI(t, "vip", "add", vipTCP, "--forward", "ipip")
	for _, b := range lab.Backends {
		d.mustCLI(t, "backend", "add", vipTCP, b.Addr.Addr().String(), "--check", "tcp", "--interval", "100ms")
	}
	d.waitStatus(t, "both backends up", allUp(2))
	dir := t.TempDir()
	b1 := lab.Backends[0].Addr.Addr()

	ng := filepath.Join(dir, "vip.pcapng")
	out := captureWhileConnecting(t, lab, "--vip", vipTCP, "-c", "40", "-w", ng)
	if !strings.Contains(out, "40 frames captured") {
		t.Fatalf("capture said %q", out)
	}
	if fi, err := os.Stat(ng); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: mode %v, want 0600 (frames carry what clients sent)", ng, fi.Mode())
	}
	frames := readPcapng(t, ng)
	if len(frames) != 40 {
		t.Fatalf("%d frames in %s, want 40", len(frames), ng)
	}
	var rx, tx int
	for i, f := range frames {
		ip, tcp := innerTCP(t, f.data, f.tx)
		if ip.DstIP.String() != "10.77.1.100" || tcp.DstPort != 7 {
			t.Fatalf("frame %d (tx=%v): %v:%d, want the VIP 10.77.1.100:7", i, f.tx, ip.DstIP, tcp.DstPort)
		}
		if f.tx {
			tx++
			if !strings.HasPrefix(f.comment, "tx vip 10.77.1.100:7/tcp backend 10.77.0.1") {
				t.Fatalf("frame %d: comment %q", i, f.comment)
			}
		} else {
			rx++
		}
	}
	if rx == 0 || tx == 0 {
		t.Fatalf("%d frames as received, %d as sent: want both", rx, tx)
	}
	t.Logf("pcapng: %d frames, %d rx and %d tx", len(frames), rx, tx)

	pc := filepath.Join(dir, "b1.pcap")
	captureWhileConnecting(t, lab, "--backend", b1.String(), "--dir", "tx", "-c", "10", "--snaplen", "96", "-w", pc)
	sent := readPcap(t, pc)
	if len(sent) != 10 {
		t.Fatalf("%d frames in %s, want 10", len(sent), pc)
	}
	for i, data := range sent {
		outer := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if outer.Protocol != layers.IPProtocolIPv4 || outer.DstIP.String() != b1.String() || len(data) > 96 {
			t.Fatalf("frame %d: protocol %v to %v, %d bytes; want IPIP to %s, at most 96", i, outer.Protocol, outer.DstIP, len(data), b1)
		}
	}
	tcpdump, err := exec.Command("tcpdump", "-nn", "-r", pc).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", pc, err, tcpdump)
	}
	if n := strings.Count(string(tcpdump), " > "+b1.String()+": "); n != 10 {
		t.Fatalf("tcpdump shows %d packets to %s, want 10:\n%s", n, b1, tcpdump)
	}
	t.Logf("tcpdump -r b1.pcap, first line: %s", strings.SplitN(string(tcpdump), "\n", 3)[1])
}

// captureWhileConnecting runs `sluice capture` on the LB with args and
// opens connections to the VIP until it exits; it returns its report.
func captureWhileConnecting(t *testing.T, lab *netlab.Lab, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := lab.LB.Command(ctx, sluiceBin, append([]string{"capture", "--iface", lab.LB.Link, "--pin-root", lab.PinRoot()}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	vip := netip.MustParseAddrPort("10.77.1.100:7")
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("sluice capture %v: %v\n%s", args, err, stderr.String())
			}
			return stderr.String()
		default:
		}
		c, err := lab.Client.Dial(ctx, "tcp4", "", vip.String())
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("sluice capture %v did not finish: %s", args, stderr.String())
			}
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		netlab.Greeting(c)
		c.Close()
	}
}

type capturedFrame struct {
	data    []byte
	tx      bool
	comment string
}

func readPcapng(t *testing.T, path string) []capturedFrame {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out []capturedFrame
	for {
		data, _, opts, err := r.ReadPacketDataWithOptions()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		fr := capturedFrame{data: data}
		if opts.Flags != nil {
			fr.tx = opts.Flags.Direction == pcapgo.NgEpbFlagDirectionOutbound
		}
		if len(opts.Comments) > 0 {
			fr.comment = opts.Comments[0]
		}
		out = append(out, fr)
	}
}

func readPcap(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		data, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
}

// innerTCP decodes a captured frame: TCP over IPv4 as received, the same
// inside IPIP as sent.
func innerTCP(t *testing.T, data []byte, tx bool) (*layers.IPv4, *layers.TCP) {
	t.Helper()
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
	var ips []*layers.IPv4
	for _, l := range p.Layers() {
		if ip, ok := l.(*layers.IPv4); ok {
			ips = append(ips, ip)
		}
	}
	want := 1
	if tx {
		want = 2
	}
	tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if len(ips) != want || !ok {
		t.Fatalf("frame (tx=%v) has %d IPv4 headers and TCP %v, want %d and TCP:\n%s", tx, len(ips), ok, want, p.Dump())
	}
	if tx && ips[0].Protocol != layers.IPProtocolIPv4 {
		t.Fatalf("sent frame's outer protocol %v, want IPIP", ips[0].Protocol)
	}
	return ips[len(ips)-1], tcp
}
