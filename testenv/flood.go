// Package testenv holds test-only harnesses of the namespaces netlab
// builds: an FRR router, and a SYN flood generator. The binary never
// links it.
package testenv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// SYNFlood describes a flood of TCP SYNs from spoofed IPv4 sources.
type SYNFlood struct {
	// Sources distinct client addresses, counting up from First, each
	// with its own address (not just a port).
	Sources uint32
	First   netip.Addr
	To      netip.AddrPort
}

// liveFrames is BPF_F_TEST_XDP_LIVE_FRAMES.
const liveFrames = 1 << 1

// xdpMd mirrors struct xdp_md, the context of a test run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// template is the 128-byte frame the generator rewrites for every packet.
func (f SYNFlood) template(dst net.HardwareAddr) (bpf.ToolsGenTemplate, error) {
	var t bpf.ToolsGenTemplate
	if !f.First.Is4() || !f.To.Addr().Is4() {
		return t, fmt.Errorf("syn flood: IPv4 sources and destination only")
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0x02, 0xf1, 0x00, 0xd0, 0, 1}, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: f.First.AsSlice(), DstIP: f.To.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: 1024, DstPort: layers.TCPPort(f.To.Port()), SYN: true, Window: 512}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(make([]byte, len(t.Data)-54))); err != nil {
		return t, err
	}
	copy(t.Data[:], buf.Bytes())
	t.Flows, t.AddrOff, t.PortOff, t.PortShift = f.Sources, 26, 34, 0
	return t, nil
}

// Flood runs a live-frames generator (BPF_PROG_TEST_RUN) on the switch
// side of h's link for d, or until ctx ends: the frames reach h's
// interface as if from the wire, as fast as one core writes them. A
// kernel that refuses live frames (EPERM, as some sandboxes' kernels do
// for every program) gets the same frames written from user space
// instead, through an AF_PACKET socket on the same interface: one core
// too, at a lower rate. It returns the frames sent.
func Flood(ctx context.Context, h *netlab.Host, f SYNFlood, d time.Duration) (uint64, error) {
	tmpl, err := f.template(h.MAC)
	if err != nil {
		return 0, err
	}
	var objs bpf.ToolsObjects
	if err := bpf.LoadToolsObjects(&objs, nil); err != nil {
		return 0, fmt.Errorf("load generator: %w", err)
	}
	defer objs.Close()
	if err := objs.GenTmpl.Update(uint32(0), tmpl, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("write generator template: %w", err)
	}
	var written uint64
	err = h.OnSwitch(func(name string) error {
		peer, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		end := time.Now().Add(d)
		for time.Now().Before(end) && ctx.Err() == nil {
			_, err := objs.XdpGen.Run(&ebpf.RunOptions{
				Data: make([]byte, len(tmpl.Data)), Repeat: 1 << 18, Flags: liveFrames,
				Context: xdpMd{DataEnd: uint32(len(tmpl.Data)), IngressIfindex: uint32(peer.Attrs().Index)},
			})
			if errors.Is(err, unix.EPERM) {
				written, err = writeFrames(ctx, peer.Attrs().Index, tmpl, end)
			}
			if err != nil {
				return fmt.Errorf("generator: %w", err)
			}
		}
		return nil
	})
	if written > 0 {
		return written, err
	}
	var per []bpf.ToolsCounter
	if lerr := objs.ToolStats.Lookup(uint32(0), &per); lerr != nil && err == nil {
		err = fmt.Errorf("read generator counter: %w", lerr)
	}
	var sent uint64
	for _, c := range per {
		sent += c.Packets
	}
	return sent, err
}

// writeFrames is the generator's loop in user space: until end or ctx,
// it writes tmpl's frame for flow after flow (the address and port
// varied as xdp_gen varies them; checksums left as they are, as there)
// to the interface ifindex through an AF_PACKET socket, and returns how
// many it wrote.
func writeFrames(ctx context.Context, ifindex int, tmpl bpf.ToolsGenTemplate, end time.Time) (uint64, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // 0: sends only, receives nothing
	if err != nil {
		return 0, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		return 0, fmt.Errorf("bind packet socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
	frame := tmpl.Data
	a := binary.BigEndian.Uint32(frame[tmpl.AddrOff:])
	p := binary.BigEndian.Uint16(frame[tmpl.PortOff:])
	shift := tmpl.PortShift & 31
	var sent uint64
	for seq := uint64(0); ; seq++ {
		if seq%4096 == 0 && (time.Now().After(end) || ctx.Err() != nil) {
			return sent, nil
		}
		if tmpl.Flows > 0 {
			flow := uint32(seq % uint64(tmpl.Flows))
			binary.BigEndian.PutUint32(frame[tmpl.AddrOff:], a+flow>>shift)
			binary.BigEndian.PutUint16(frame[tmpl.PortOff:], p+uint16(flow&(1<<shift-1)))
		}
		if _, err := unix.Write(fd, frame[:]); err == nil {
			sent++
		} else if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) {
			return sent, fmt.Errorf("write frame: %w", err)
		}
	}
}
