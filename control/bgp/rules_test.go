package bgp

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestDecide(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.77.1.100"), netip.MustParseAddr("fd77:1::100")
	up := NodeView{Attached: true, Synced: true}
	shared := []Service{
		{VIP: "10.77.1.100:7/tcp", Addr: v4, Usable: 0, MinActive: 1},
		{VIP: "10.77.1.100:80/tcp", Addr: v4, Usable: 2, MinActive: 2},
		{VIP: "[fd77:1::100]:80/tcp", Addr: v6, Usable: 1, MinActive: 2},
	}
	r4, r6 := netip.MustParsePrefix("10.77.1.100/32"), netip.MustParsePrefix("fd77:1::100/128")
	for _, c := range []struct {
		name     string
		node     NodeView
		services []Service
		announce []netip.Prefix
		withheld map[netip.Prefix]string
		good     []bool // per service, in VIP order
	}{
		{"one dead service on a shared address keeps it", up, shared, []netip.Prefix{r4}, map[netip.Prefix]string{r6: ReasonNoBackends}, []bool{false, true, false}},
		{"draining withholds all", NodeView{Draining: true, Attached: true, Synced: true}, shared, nil, map[netip.Prefix]string{r4: ReasonDraining, r6: ReasonDraining}, []bool{false, false, false}},
		{"fault", NodeView{Fault: true, Attached: true, Synced: true}, shared, nil, map[netip.Prefix]string{r4: ReasonInterfaceDown, r6: ReasonInterfaceDown}, []bool{false, false, false}},
		{"not attached", NodeView{Synced: true}, shared[1:2], nil, map[netip.Prefix]string{r4: ReasonNotAttached}, []bool{false}},
		{"not synced", NodeView{Attached: true}, shared[1:2], nil, map[netip.Prefix]string{r4: ReasonNotSynced}, []bool{false}},
		{"copying flows", NodeView{Attached: true, Synced: true, CopyingFlows: true, Learning: true}, shared[1:2], nil, map[netip.Prefix]string{r4: ReasonCopyingFlows}, []bool{false}},
		{"checks undecided", NodeView{Attached: true, Synced: true, Undecided: true, Learning: true}, shared[1:2], nil, map[netip.Prefix]string{r4: ReasonUndecided}, []bool{false}},
		{"learning", NodeView{Attached: true, Synced: true, Learning: true}, shared[1:2], nil, map[netip.Prefix]string{r4: ReasonLearning}, []bool{false}},
		{"min_active 0 means 1", up, []Service{{VIP: "10.77.1.100:7/tcp", Addr: v4, Usable: 1}}, []netip.Prefix{r4}, map[netip.Prefix]string{}, []bool{true}},
		{"no services, nothing", up, nil, nil, map[netip.Prefix]string{}, nil},
		{"no IPv6 next hop withholds the /128 only", NodeView{Attached: true, Synced: true, NoNextHop6: true},
			[]Service{shared[1], {VIP: "[fd77:1::100]:80/tcp", Addr: v6, Usable: 2, MinActive: 2}},
			[]netip.Prefix{r4}, map[netip.Prefix]string{r6: ReasonNoNextHop6}, []bool{true, true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := Decide(c.node, c.services)
			if !reflect.DeepEqual(d.Announce, c.announce) {
				t.Errorf("announce %v, want %v", d.Announce, c.announce)
			}
			if !reflect.DeepEqual(d.Withheld, c.withheld) {
				t.Errorf("withheld %v, want %v", d.Withheld, c.withheld)
			}
			var good []bool
			for _, s := range d.Services {
				good = append(good, s.Serviceable)
				if !s.Serviceable && s.Reason == "" {
					t.Errorf("%s withheld without a reason", s.VIP)
				}
			}
			if !reflect.DeepEqual(good, c.good) {
				t.Errorf("serviceable %v, want %v (%+v)", good, c.good, d.Services)
			}
		})
	}
}

func TestParsePeer(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		err  bool
	}{
		{"10.77.0.254@65000", "10.77.0.254:179@65000", false},
		{"10.77.0.254:1179@65000", "10.77.0.254:1179@65000", false},
		{"[fd77::fe]:179@4200000000", "[fd77::fe]:179@4200000000", false},
		{"fd77::fe@65000", "[fd77::fe]:179@65000", false},
		{"10.77.0.254", "", true},
		{"10.77.0.254@0", "", true},
		{"10.77.0.254@4294967295", "", true},
		{"router@65000", "", true},
		{"10.77.0.254:0@65000", "", true},
	} {
		p, err := ParsePeer(c.in)
		if (err != nil) != c.err || (err == nil && p.String() != c.want) {
			t.Errorf("ParsePeer(%q) = %v, %v; want %q (error %v)", c.in, p, err, c.want, c.err)
		}
	}
}

func TestParseCommunity(t *testing.T) {
	for in, want := range map[string]uint32{"65000:100": 65000<<16 | 100, "graceful-shutdown": GracefulShutdown, "0:0": 0} {
		if got, err := ParseCommunity(in); err != nil || got != want {
			t.Errorf("ParseCommunity(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"65536:1", "1", "a:b", ""} {
		if _, err := ParseCommunity(in); err == nil {
			t.Errorf("ParseCommunity(%q) accepted", in)
		}
	}
}

// TestCompleteBoundsPasswordAndPrefixes: TCP MD5 takes at most 80 bytes,
// and the prefix limit has a default.
func TestCompleteBoundsPasswordAndPrefixes(t *testing.T) {
	base := func() Config {
		return Config{ASN: 65001, Peers: []Peer{{Addr: netip.MustParseAddrPort("10.0.0.1:179"), ASN: 65000}}}
	}
	c := base()
	if err := c.Complete(); err != nil || c.MaxPrefixes != DefaultMaxPrefixes {
		t.Fatalf("defaults: %v, max prefixes %d", err, c.MaxPrefixes)
	}
	c = base()
	c.Password = strings.Repeat("k", MaxPasswordLen)
	if err := c.Complete(); err != nil {
		t.Fatalf("an 80-byte password: %v", err)
	}
	c = base()
	c.Password = strings.Repeat("k", MaxPasswordLen+1)
	if err := c.Complete(); err == nil || !strings.Contains(err.Error(), "--bgp-password") {
		t.Fatalf("an 81-byte password: %v", err)
	}
}
