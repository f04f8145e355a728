package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// birdOnLoopback runs a real BIRD that accepts one eBGP session from
// 127.0.0.1 on a free port of 127.0.0.2, and returns it and the peer.
func birdOnLoopback(t *testing.T) (*netlab.BIRD, Peer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := fmt.Sprintf(`log stderr all;
router id 10.255.0.1;
protocol device {}
protocol bgp lb {
  local 127.0.0.2 port %d as 65000;
  neighbor 127.0.0.1 as 65001;
  passive on;
  multihop;
  hold time 3;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
`, port)
	b, err := netlab.StartBIRD(context.Background(), t.TempDir(), nil, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	return b, Peer{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(port)), ASN: 65000}
}

// waitFor polls BIRD until ok holds for the output of show args.
func waitFor(t *testing.T, b *netlab.BIRD, what string, ok func(string) bool, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := b.Show(context.Background(), args...)
		if err == nil && ok(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: BIRD's show %s is %q (err %v); its log:\n%s", what, strings.Join(args, " "), out, err, b.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSpeakerAgainstBIRD: the speaker dials a real BIRD, which then holds
// exactly the routes Set asks for, with the configured community, next
// hop self, and GRACEFUL_SHUTDOWN while tagged; a stopped speaker's
// routes are gone from the router.
func TestSpeakerAgainstBIRD(t *testing.T) {
	b, peer := birdOnLoopback(t)
	cfg := Config{ASN: 65001, RouterID: netip.MustParseAddr("10.255.0.2"), Peers: []Peer{peer}, Communities: []uint32{65001<<16 | 7}}
	if err := cfg.Complete(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := NewSpeaker(ctx, cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			s.Stop()
		}
	}()
	waitFor(t, b, "session", func(o string) bool { return strings.Contains(o, "Established") }, "protocols", "lb")
	r100, r101 := netip.MustParsePrefix("10.77.1.100/32"), netip.MustParsePrefix("10.77.1.101/32")
	if err := s.Set([]netip.Prefix{r100, r101}, false); err != nil {
		t.Fatal(err)
	}
	out := waitFor(t, b, "two routes", func(o string) bool {
		return strings.Contains(o, "10.77.1.100/32") && strings.Contains(o, "10.77.1.101/32")
	}, "route", "protocol", "lb")
	t.Logf("BIRD holds:\n%s", out)
	all := waitFor(t, b, "attributes", func(o string) bool { return strings.Contains(o, "BGP.community") }, "route", "all", "10.77.1.100/32")
	for _, want := range []string{"BGP.next_hop: 127.0.0.1", "(65001,7)", "BGP.as_path: 65001"} {
		if !strings.Contains(all, want) {
			t.Errorf("route lacks %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "(65535,0)") {
		t.Errorf("untagged route carries GRACEFUL_SHUTDOWN:\n%s", all)
	}
	if err := s.Set([]netip.Prefix{r100}, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "withdrawn and tagged", func(o string) bool {
		return !strings.Contains(o, "10.77.1.101/32") && strings.Contains(o, "(65535,0)")
	}, "route", "all", "protocol", "lb")
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Sent(sctx); err != nil {
		t.Fatal(err)
	}
	ps, err := s.Peers(ctx)
	if err != nil || len(ps) != 1 || ps[0].State != "established" || ps[0].AdjOut != 1 || ps[0].BFD != "off" || ps[0].Uptime == "" {
		t.Fatalf("peers %+v, %v: want one established, 1 route sent, bfd off", ps, err)
	}
	if got := s.Announced(); len(got) != 1 || got[0] != r100 {
		t.Fatalf("announced %v, want [%v]", got, r100)
	}
	s.Stop()
	stopped = true
	waitFor(t, b, "stopped speaker's routes gone", func(o string) bool { return !strings.Contains(o, "10.77.1.100/32") }, "route", "protocol", "lb")
}

// TestSpeakerIPv6Route: an IPv6 VIP address goes out as a /128 in
// MP_REACH_NLRI (IPv6 unicast) next to the IPv4 /32s, and its withdrawal
// leaves the IPv4 route in place.
func TestSpeakerIPv6Route(t *testing.T) {
	b, peer := birdOnLoopback(t)
	cfg := Config{ASN: 65001, RouterID: netip.MustParseAddr("10.255.0.2"), Peers: []Peer{peer}}
	if err := cfg.Complete(); err != nil {
		t.Fatal(err)
	}
	// Over this IPv4 session an IPv6 route would carry 127.0.0.1 as its
	// next hop, which BIRD refuses ("mismatched address family").
	if !cfg.NoNextHop6() {
		t.Fatal("an IPv4 session without --bgp-next-hop6: NoNextHop6 false")
	}
	cfg.NextHop6 = netip.MustParseAddr("fd77::2")
	if cfg.NoNextHop6() {
		t.Fatal("NoNextHop6 with --bgp-next-hop6 set")
	}
	s, err := NewSpeaker(context.Background(), cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	waitFor(t, b, "session", func(o string) bool { return strings.Contains(o, "Established") }, "protocols", "lb")
	r4, r6 := netip.MustParsePrefix("10.77.1.100/32"), netip.MustParsePrefix("fd77:1::100/128")
	if err := s.Set([]netip.Prefix{r4, r6}, false); err != nil {
		t.Fatal(err)
	}
	all := waitFor(t, b, "the /128", func(o string) bool { return strings.Contains(o, "fd77:1::100/128") }, "route", "all", "protocol", "lb")
	t.Logf("BIRD holds:\n%s", all)
	for _, want := range []string{"10.77.1.100/32", "BGP.next_hop: fd77::2"} {
		if !strings.Contains(all, want) {
			t.Errorf("BIRD's routes lack %q:\n%s", want, all)
		}
	}
	if err := s.Set([]netip.Prefix{r4}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "the /128 withdrawn, the /32 kept", func(o string) bool {
		return !strings.Contains(o, "fd77:1::100/128") && strings.Contains(o, "10.77.1.100/32")
	}, "route", "protocol", "lb")
}
