package probevia

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// backends is the data plane's backend table as the dialer asks it.
type backends map[netip.Addr]uint32

func (b backends) FlowBackend(_ netip.AddrPort, _ loader.Proto, addr netip.Addr) (uint32, bool) {
	idx, ok := b[addr]
	return idx, ok
}

// TestDialRefusesWhatCannotArrive: a probe that could not reach its
// backend through the data plane is not sent, and the error says why:
// the backend is not in the data plane, there is no route to the VIP, the
// route leaves through another interface, or tc_probe is not attached.
func TestDialRefusesWhatCannotArrive(t *testing.T) {
	testutil.Require(t)
	testutil.InNewNetns(t, func() { dialInNetns(t) })
}

// dialInNetns is TestDialRefusesWhatCannotArrive in its own namespace:
// the data plane's interface sluicet-a and another, sluicet-b.
func dialInNetns(t *testing.T) {
	for _, name := range []string{"sluicet-a", "sluicet-b"} {
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
				t.Fatal(err)
			}
		}
		l, _ := netlink.LinkByName(name)
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := netlink.LinkByName("sluicet-a")
	b, _ := netlink.LinkByName("sluicet-b")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: b.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(10, 201, 0, 0), Mask: net.CIDRMask(24, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	ifi, err := net.InterfaceByIndex(a.Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	be := netip.MustParseAddr("10.0.0.12")
	d := &Dialer{Backends: backends{be: 2}, Iface: ifi}
	for _, c := range []struct {
		name, addr string
		via        netip.Addr
		attached   error
		want       string
	}{
		{"not in the data plane", "10.201.0.1:80", netip.MustParseAddr("10.0.0.99"), nil, "backend 10.0.0.99 of 10.201.0.1:80 is not in the data plane"},
		{"no route", "10.200.0.1:80", be, nil, "no route to 10.200.0.1: the host needs one through sluicet-a (a default route does)"},
		{"another interface", "10.201.0.1:80", be, nil, "the route to 10.201.0.1 leaves through sluicet-b, not sluicet-a, where the data plane is"},
		{"not attached", "10.201.0.1:80", be, errors.New("tcx: not supported"), "tcx: not supported"},
	} {
		d.Attached = c.attached
		_, err := d.Dial(c.via)(context.Background(), "tcp", c.addr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// Routed out of the interface: the socket carries backend 2's mark.
	d.Attached = nil
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: a.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(10, 202, 0, 0), Mask: net.CIDRMask(24, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial(be)(context.Background(), "udp", "10.202.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var serr error
	rc.Control(func(fd uintptr) { mark, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if serr != nil || mark != 0x51ce0002 {
		t.Fatalf("probe socket mark %#x (%v), want 0x51ce0002", mark, serr)
	}
}

// TestAcceptLocalGivenBack: accept_local, turned on for a check via a
// VIP this node holds, goes back to 0 on Close; a 1 the host had set
// itself stays.
func TestAcceptLocalGivenBack(t *testing.T) {
	testutil.Require(t)
	testutil.InNewNetns(t, func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sluicet-a"}, PeerName: "sluicet-ap"}); err != nil {
			t.Fatal(err)
		}
		ifi, err := net.InterfaceByName("sluicet-a")
		if err != nil {
			t.Fatal(err)
		}
		path := "/proc/sys/net/ipv4/conf/sluicet-a/accept_local"
		read := func() string {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(b))
		}
		vip := netip.MustParseAddr("10.203.0.1")
		for _, c := range []struct{ before, during, after string }{
			{"0", "1", "0"}, // turned on for the check, given back
			{"1", "1", "1"}, // the host's own setting, left alone
		} {
			if err := os.WriteFile(path, []byte(c.before), 0o644); err != nil {
				t.Fatal(err)
			}
			d := &Dialer{Iface: ifi}
			if err := d.acceptLocal(vip); err != nil {
				t.Fatal(err)
			}
			if got := read(); got != c.during {
				t.Fatalf("from %s: accept_local %s while checking, want %s", c.before, got, c.during)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if got := read(); got != c.after {
				t.Fatalf("from %s: accept_local %s after Close, want %s", c.before, got, c.after)
			}
		}
	})
}
