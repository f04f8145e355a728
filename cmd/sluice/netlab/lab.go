package netlab

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
)

// Lab addresses: hosts share 10.77.0.0/24 and fd77::/64; VIPs live in
// 10.77.1.0/24 and fd77:1::/64, routed by the client via the LB.
var (
	LabNet4    = netip.MustParsePrefix("10.77.0.0/24")
	LabVIPNet4 = netip.MustParsePrefix("10.77.1.0/24")
	LabVIPNet6 = netip.MustParsePrefix("fd77:1::/64")
	LabVIP4    = netip.MustParseAddr("10.77.1.100")
	LabVIP6    = netip.MustParseAddr("fd77:1::100")
	// With LabOptions.Router: the router on the hosts' segment, and the
	// client's own segment behind it.
	LabRouter4    = netip.MustParsePrefix("10.77.0.254/24")
	LabRouter6    = netip.MustParsePrefix("fd77::fe/64")
	LabClientNet4 = netip.MustParsePrefix("10.78.0.0/24")
	LabClientNet6 = netip.MustParsePrefix("fd78::/64")
)

// Lab ports: every backend answers with its name on each.
const (
	LabEchoPort = 7  // TCP: greeting line with the name, then echo
	LabHTTPPort = 80 // HTTP
	LabUDPPort  = 53 // UDP
)

// LabOptions shape a lab.
type LabOptions struct {
	Backends  int // default 3
	TCPPorts  []uint16
	HTTPPorts []uint16
	UDPPorts  []uint16
	VIPs      []netip.Addr // default LabVIP4 and LabVIP6
	// Prefix of the lab's names; default Prefix (swept when its process dies).
	Prefix string
	// Pair adds a second LB host, lb2 (.3), and makes the VIP networks
	// on-link for the client: it finds the VIPs' owner with ARP and ND,
	// as behind an active/standby pair.
	Pair bool
	// Nodes, past 1, adds LB hosts lb2 (.3), lb3 (.4)… for a cluster of
	// active nodes; the client routes the VIPs through lb, unless Router.
	Nodes int
	// Router adds a router host (.254) and puts the client behind it on
	// 10.78.0.0/24: the router forwards (L4 multipath hash on) and
	// backends answer the client through it (DSR). The caller runs the
	// routing daemon that gives it its routes to the VIPs. IPv4 only.
	Router bool
}

// Host returns the lab host called name (client, lb, b1...), or nil.
func (l *Lab) Host(name string) *Host {
	switch name {
	case "client":
		return l.Client
	case "lb":
		return l.LB
	case "router":
		return l.Router
	}
	for _, h := range l.Nodes {
		if h.Name == name {
			return h
		}
	}
	for _, b := range l.Backends {
		if b.Name == name {
			return b.Host
		}
	}
	return nil
}

// Lab is the standard topology: a client, an LB host (XDP_TX-capable peer)
// and N backends on one bridge.
type Lab struct {
	*Env
	Client   *Host
	LB       *Host
	LB2      *Host   // with LabOptions.Pair or Nodes ≥ 2
	Router   *Host   // with LabOptions.Router
	Nodes    []*Host // every LB host: lb, lb2…
	Backends []*Backend
}

func labAddr(host byte) (netip.Prefix, netip.Prefix) {
	v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, 0, host}), 24)
	v6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x77, 15: host}), 64)
	return v4, v6
}

// NewLab builds the standard topology. Close the lab to remove it.
func NewLab(ctx context.Context, log *slog.Logger, opts LabOptions) (*Lab, error) {
	if opts.Backends == 0 {
		opts.Backends = 3
	}
	if opts.TCPPorts == nil {
		opts.TCPPorts = []uint16{LabEchoPort}
	}
	if opts.HTTPPorts == nil {
		opts.HTTPPorts = []uint16{LabHTTPPort}
	}
	if opts.UDPPorts == nil {
		opts.UDPPorts = []uint16{LabUDPPort}
	}
	if opts.VIPs == nil {
		opts.VIPs = []netip.Addr{LabVIP4, LabVIP6}
	}
	if opts.Prefix == "" {
		opts.Prefix = Prefix
	}
	env, err := NewWithPrefix(ctx, log, opts.Prefix)
	if err != nil {
		return nil, err
	}
	l := &Lab{Env: env}
	if err := l.build(ctx, opts); err != nil {
		env.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context, opts LabOptions) error {
	var err error
	if err := l.addClient(opts); err != nil {
		return err
	}
	lb4, lb6 := labAddr(2)
	l.LB, err = l.AddHost("lb", lb4, HostOptions{PeerXDPPass: true, Addr6: lb6})
	if err != nil {
		return err
	}
	l.Nodes = []*Host{l.LB}
	gw4, gw6 := lb4.Addr(), lb6.Addr()
	for i := 2; i <= opts.Nodes; i++ {
		n4, n6 := labAddr(byte(i + 1))
		h, err := l.AddHost(fmt.Sprintf("lb%d", i), n4, HostOptions{PeerXDPPass: true, Addr6: n6})
		if err != nil {
			return err
		}
		l.Nodes = append(l.Nodes, h)
	}
	if len(l.Nodes) > 1 {
		l.LB2 = l.Nodes[1]
	}
	if opts.Pair {
		if l.LB2 == nil {
			b4, b6 := labAddr(3)
			if l.LB2, err = l.AddHost("lb2", b4, HostOptions{PeerXDPPass: true, Addr6: b6}); err != nil {
				return err
			}
			l.Nodes = append(l.Nodes, l.LB2)
		}
		gw4, gw6 = netip.Addr{}, netip.Addr{}
	}
	if err := l.routeVIPsFromNodes(opts.Router); err != nil {
		return err
	}
	if !opts.Router {
		if err := l.Client.AddRoute(LabVIPNet4, gw4); err != nil {
			return err
		}
		if err := l.Client.AddRoute(LabVIPNet6, gw6); err != nil {
			return err
		}
	}
	for i := range opts.Backends {
		a4, a6 := labAddr(byte(11 + i))
		b, err := l.AddBackend(ctx, fmt.Sprintf("b%d", i+1), a4, BackendOptions{
			VIPs: opts.VIPs, TCPPorts: opts.TCPPorts, HTTPPorts: opts.HTTPPorts, UDPPorts: opts.UDPPorts, Host: HostOptions{Addr6: a6},
		})
		if err != nil {
			return err
		}
		if opts.Router {
			if err := b.Host.AddRoute(LabClientNet4, LabRouter4.Addr()); err != nil {
				return err
			}
			if err := b.Host.AddRoute(LabClientNet6, LabRouter6.Addr()); err != nil {
				return err
			}
		}
		l.Backends = append(l.Backends, b)
	}
	return nil
}

// routeVIPsFromNodes routes the VIP networks from every LB host out of
// its interface, towards the client's side (the router, or the client),
// as an LB's default route does: a health check through the data plane
// (check via vip) leaves through that interface, where tc_probe sends it
// to its backend instead.
func (l *Lab) routeVIPsFromNodes(router bool) error {
	up4, up6 := labAddr(1)
	if router {
		up4, up6 = LabRouter4, LabRouter6
	}
	for _, h := range l.Nodes {
		if err := h.AddRoute(LabVIPNet4, up4.Addr()); err != nil {
			return err
		}
		if err := h.AddRoute(LabVIPNet6, up6.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// addClient adds the client: on the hosts' segment, or behind the router.
func (l *Lab) addClient(opts LabOptions) error {
	var err error
	if !opts.Router {
		c4, c6 := labAddr(1)
		l.Client, err = l.AddHost("client", c4, HostOptions{MTU: 1500, TxChecksumOff: true, Addr6: c6})
		return err
	}
	if l.Router, err = l.AddHost("router", LabRouter4, HostOptions{PeerXDPPass: true, Addr6: LabRouter6}); err != nil {
		return err
	}
	for k, v := range map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/fib_multipath_hash_policy": "1",
		"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/all/send_redirects": "0",
		"net/ipv6/conf/all/forwarding": "1", "net/ipv6/fib_multipath_hash_policy": "1"} {
		if err := l.Router.Sysctl(k, v); err != nil {
			return err
		}
	}
	cl := netip.PrefixFrom(LabClientNet4.Addr().Next(), LabClientNet4.Bits())
	gw := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 78, 0, 254}), LabClientNet4.Bits())
	cl6 := netip.PrefixFrom(LabClientNet6.Addr().Next(), LabClientNet6.Bits())
	gw6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x78, 15: 0xfe}), LabClientNet6.Bits())
	l.Client, err = l.AddHostBehind(l.Router, "client", cl, gw, HostOptions{MTU: 1500, TxChecksumOff: true, Addr6: cl6, Gateway6: gw6})
	return err
}
