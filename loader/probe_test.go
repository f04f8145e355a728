package loader

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// tc actions tc_probe returns.
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

// gwMAC is the next hop's MAC the kernel writes on a probe before
// tc_probe sees it.
var gwMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x9a}

// egress turns a frame built as the client sends it into the frame the
// LB host's own stack sends: from the LB's MAC to its next hop.
func egress(b []byte) []byte {
	copy(b[0:6], gwMAC)
	copy(b[6:12], lbMAC)
	return b
}

// runProbe runs tc_probe on frame with skb mark; the test run puts the
// skb on loopback's egress.
func (f *fixture) runProbe(t testing.TB, frame []byte, mark uint32) (uint32, []byte) {
	t.Helper()
	var ctx [11]uint32 // struct __sk_buff up to ifindex; mark is its third field
	ctx[2] = mark
	in := make([]byte, 4*len(ctx))
	for i, v := range ctx {
		binary.NativeEndian.PutUint32(in[4*i:], v)
	}
	out := make([]byte, 256) // room for the whole struct __sk_buff the kernel writes back
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Context: in, ContextOut: out}
	ret, err := f.d.ProbeProgram().Run(opts)
	if err != nil {
		t.Fatalf("run tc_probe: %v", err)
	}
	// A probe sent on from loopback meets tc_probe again on the
	// interface: it must be unmarked by then.
	if m := binary.NativeEndian.Uint32(out[8:]); ret == tcActRedirect && m != 0 {
		t.Fatalf("redirected with mark %#x, want 0", m)
	}
	return ret, opts.DataOut
}

// mustMark is the mark that names backend idx, from sluice.h.
func mustMark(_ testing.TB, idx uint32) uint32 {
	return uint32(bpf.LbSluiceProbeSLUICE_PROBE_TAG)<<bpf.LbSluiceProbeSLUICE_PROBE_TAG_SHIFT | idx
}

// TestProbePackets: a marked probe leaves exactly as xdp_lb sends data
// of its VIP to the backend the mark names, byte for byte, whichever
// backend the ring would pick: encapsulated (IPIP, GUE, in each family),
// or with the MACs rewritten (dsr). A mark that names no backend of the
// packet's VIP, or a packet no VIP takes, is dropped and counted; an
// unmarked packet is not touched.
func TestProbePackets(t *testing.T) {
	const (
		lb4 = "10.0.0.2:40001"
		lb6 = "[2001:db8::2]:40001"
	)
	ipip4 := func(idx uint32, src string) func(testing.TB, []byte) []byte {
		return func(t testing.TB, in []byte) []byte {
			return expectIPIP4(t, in, backendAddr(idx), idx, netip.MustParseAddrPort(src))
		}
	}
	ipip6 := func(idx uint32, src string) func(testing.TB, []byte) []byte {
		return func(t testing.TB, in []byte) []byte {
			return expectIPIP6(t, in, backendAddr(idx), idx, netip.MustParseAddrPort(src))
		}
	}
	gue := func(idx uint32, src string, port uint16) func(testing.TB, []byte) []byte {
		return func(t testing.TB, in []byte) []byte {
			return expectGUE(t, in, backendAddr(idx), idx, netip.MustParseAddrPort(src), port, false)
		}
	}
	dsr := func(idx uint32) func(testing.TB, []byte) []byte {
		return func(_ testing.TB, in []byte) []byte { return expectDSR(in, idx) }
	}
	cases := []struct {
		name string
		in   []byte
		mark uint32
		ret  uint32
		want func(testing.TB, []byte) []byte // nil: the input, untouched
		stat Stat                            // counted once; 0: nothing counted
	}{
		{"ipip v4 syn to b1", egress(pkt4(t, lb4, "10.0.0.100:80", synSeg)), mustMark(t, 1), tcActRedirect, ipip4(1, lb4), StatProbeTx},
		{"ipip v4 syn to b2", egress(pkt4(t, lb4, "10.0.0.100:80", synSeg)), mustMark(t, 2), tcActRedirect, ipip4(2, lb4), StatProbeTx},
		{"ipip v4 http request to b3", egress(pkt4(t, lb4, "10.0.0.100:80", ackSeg)), mustMark(t, 3), tcActRedirect, ipip4(3, lb4), StatProbeTx},
		{"ipip v4 any-port vip, port 8080", egress(pkt4(t, lb4, "10.0.0.101:8080", synSeg)), mustMark(t, 6), tcActRedirect, ipip4(6, lb4), StatProbeTx},
		{"ipip v6", egress(pkt6(t, lb6, "[2001:db8::100]:443", synSeg)), mustMark(t, 8), tcActRedirect, ipip6(8, lb6), StatProbeTx},
		{"ipip v4 in v6", egress(pkt4(t, lb4, "10.0.0.102:80", synSeg)), mustMark(t, 9), tcActRedirect, ipip6(9, lb4), StatProbeTx},
		{"dsr v4 udp", egress(pkt4(t, lb4, "10.0.0.100:53", udpDg)), mustMark(t, 5), tcActRedirect, dsr(5), StatProbeTx},
		{"dsr v6 udp", egress(pkt6(t, lb6, "[2001:db8::100]:53", udpDg)), mustMark(t, 10), tcActRedirect, dsr(10), StatProbeTx},
		{"gue v4 tcp", egress(pkt4(t, lb4, "10.0.0.105:80", ackSeg)), mustMark(t, 12), tcActRedirect, gue(12, lb4, DefaultGUEPort), StatProbeTx},
		{"gue v4 udp, own port", egress(pkt4(t, lb4, "10.0.0.105:53", udpDg)), mustMark(t, 13), tcActRedirect, gue(13, lb4, 5555), StatProbeTx},
		{"gue v6 tcp", egress(pkt6(t, lb6, "[2001:db8::105]:443", synSeg)), mustMark(t, 14), tcActRedirect, gue(14, lb6, DefaultGUEPort), StatProbeTx},
		{"gue v4 in v6 udp", egress(pkt4(t, lb4, "10.0.0.106:53", udpDg)), mustMark(t, 15), tcActRedirect, gue(15, lb4, 5555), StatProbeTx},
		{"unmarked: untouched", egress(pkt4(t, lb4, "10.0.0.100:80", synSeg)), 0, tcActOK, nil, 0},
		{"another mark: untouched", egress(pkt4(t, lb4, "10.0.0.100:80", synSeg)), 0x12340002, tcActOK, nil, 0},
		{"backend of another vip: dropped", egress(pkt4(t, lb4, "10.0.0.100:80", synSeg)), mustMark(t, 4), tcActShot, nil, StatProbeDrop},
		{"no such backend: dropped", egress(pkt4(t, lb4, "10.0.0.100:80", synSeg)), mustMark(t, 100), tcActShot, nil, StatProbeDrop},
		{"not a vip: dropped", egress(pkt4(t, lb4, "10.0.9.9:80", synSeg)), mustMark(t, 1), tcActShot, nil, StatProbeDrop},
		{"port no vip serves: dropped", egress(pkt4(t, lb4, "10.0.0.100:81", synSeg)), mustMark(t, 1), tcActShot, nil, StatProbeDrop},
		{"ipv6 in ipv4 is not offered: dropped", egress(pkt6(t, lb6, "[2001:db8::101]:80", synSeg)), mustMark(t, 11), tcActShot, nil, StatProbeDrop},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, seed)
			in := append([]byte(nil), c.in...)
			ret, out := f.runProbe(t, c.in, c.mark)
			if ret != c.ret {
				t.Fatalf("tc_probe returned %d, want %d", ret, c.ret)
			}
			want := in
			if c.want != nil {
				want = c.want(t, in)
			}
			if c.ret != tcActShot && !bytes.Equal(out, want) {
				t.Fatalf("frame\n got %x\nwant %x", out, want)
			}
			stats, err := f.d.Stats()
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range AllStats() {
				want := uint64(0)
				if s == c.stat && c.stat != 0 {
					want = 1
				}
				if stats[s].Packets != want {
					t.Errorf("counter %s = %d, want %d", s, stats[s].Packets, want)
				}
			}
		})
	}
}
