package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// sendIPIP sends, from h, an IPIP packet with the outer source src (spoofed
// if it is not h's) to dst, carrying a SYN to a VIP.
func sendIPIP(h *netlab.Host, src, dst netip.Addr) error {
	outer := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolIPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	inner := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: netip.MustParseAddr("10.77.0.200").AsSlice(), DstIP: netip.MustParseAddr("10.77.0.100").AsSlice()}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 1024}
	tcp.SetNetworkLayerForChecksum(inner)
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
	if err := gopacket.SerializeLayers(buf, opts, outer, inner, tcp); err != nil {
		return err
	}
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, buf.Bytes(), 0, &unix.SockaddrInet4{Addr: dst.As4()})
	})
}

type decapStatusJSON struct {
	AllowFrom []netip.Prefix `json:"allow_from"`
	GUEPorts  []uint16       `json:"gue_ports"`
	Counters  map[string]struct {
		Packets uint64 `json:"packets"`
	} `json:"counters"`
}

// TestDecapAllowFromCLI: `sluice decap attach --allow-from` accepts the
// interface's subnet, sluice's outer-source prefix and the given prefix;
// IPIP from a spoofed source elsewhere is dropped, and `sluice decap
// status` counts it as refused.
func TestDecapAllowFromCLI(t *testing.T) {
	lab := newLab(t, netlab.LabOptions{Backends: 1})
	h, sender := lab.Client, lab.Backends[0]
	run := func(args ...string) []byte {
		t.Helper()
		args = append(args, "--iface", h.Link, "--pin-root", lab.PinRoot())
		out, err := h.Command(context.Background(), sluiceBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("sluice %v: %v\n%s", args, err, out)
		}
		return out
	}
	if out, err := h.Command(context.Background(), sluiceBin, "decap", "attach", "--iface", h.Link, "--allow-from", "not-a-prefix").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), `--allow-from "not-a-prefix"`) {
		t.Fatalf("a bad --allow-from: %v\n%s", err, out)
	}
	if out, err := h.Command(context.Background(), sluiceBin, "decap", "attach", "--iface", h.Link, "--gue-port", "0").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), `--gue-port "0"`) {
		t.Fatalf("--gue-port 0: %v\n%s", err, out)
	}
	run("decap", "attach", "--allow-from", "203.0.113.0/24", "--gue-port", "6080", "--gue-port", "7000")
	var st decapStatusJSON
	read := func() {
		t.Helper()
		if err := json.Unmarshal(run("decap", "status", "-o", "json"), &st); err != nil {
			t.Fatal(err)
		}
	}
	read()
	want := []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24"), netip.MustParsePrefix("172.16.0.0/16"),
		netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("fd00:5:1ce::/96"), netip.MustParsePrefix("fd77::/64")}
	if !slices.Equal(st.AllowFrom, want) {
		t.Fatalf("allow list %v, want %v", st.AllowFrom, want)
	}
	if !slices.Equal(st.GUEPorts, []uint16{6080, 7000}) {
		t.Fatalf("GUE ports %v, want [6080 7000]", st.GUEPorts)
	}
	dst := h.Addr.Addr()
	// The refused ones go first: once the last allowed one is counted, the
	// path (one sender, one link) has delivered them all.
	sends := []struct {
		src string
		ok  bool
	}{{"198.51.100.7", false}, {"172.17.0.1", false}, {sender.Addr.Addr().String(), true}, {"172.16.9.9", true}, {"203.0.113.50", true}}
	for _, s := range sends {
		if err := sendIPIP(sender.Host, netip.MustParseAddr(s.src), dst); err != nil {
			t.Fatalf("send from %s: %v", s.src, err)
		}
	}
	testutil.WaitCount(t, func() int64 { read(); return int64(st.Counters["decapsulated"].Packets) }, 3, 5*time.Second,
		func() string { return fmt.Sprintf("decap counters stalled at %+v", st.Counters) })
	if d, r := st.Counters["decapsulated"].Packets, st.Counters["refused"].Packets; d != 3 || r != 2 {
		t.Fatalf("decapsulated %d refused %d, want 3 and 2", d, r)
	}
	t.Logf("decapsulated 3, refused 2 (spoofed 198.51.100.7 and 172.17.0.1)")
	run("decap", "detach")
}
