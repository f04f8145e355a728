// Package probevia dials health probes through the data plane (check via
// vip): a probe addressed to a VIP leaves marked with one backend's
// index, and the data plane's tc_probe program sends it to that backend
// exactly as it sends the VIP's traffic there.
package probevia

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/control/netif"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/loader/tcprobe"
)

// Backends finds the data plane's index of backend addr of the VIP a
// flow to dst/proto belongs to (reconcile.Reconciler does).
type Backends interface {
	FlowBackend(dst netip.AddrPort, proto loader.Proto, addr netip.Addr) (uint32, bool)
}

// Dialer dials probes through the data plane attached to Iface.
type Dialer struct {
	Backends Backends
	Iface    *net.Interface
	// Attached is nil once tc_probe is attached, else why it is not.
	Attached error
	Log      *slog.Logger

	acceptMu    sync.Mutex
	acceptSet   bool // accept_local is on, as this Dialer set or found it
	acceptWrote bool // this Dialer turned it on: Close turns it off
}

// Dial is the dial function of probes through the data plane to backend via.
func (d *Dialer) Dial(via netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd, err := d.dialer(network, addr, via)
		if err != nil {
			return nil, err
		}
		return nd.DialContext(ctx, network, addr)
	}
}

// dialer is a dialer whose socket carries via's probe mark, from the
// interface's address when the VIP is local to this host.
func (d *Dialer) dialer(network, addr string, via netip.Addr) (*net.Dialer, error) {
	if d.Attached != nil {
		return nil, d.Attached
	}
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	proto := loader.TCP
	if strings.HasPrefix(network, "udp") {
		proto = loader.UDP
	}
	idx, ok := d.Backends.FlowBackend(dst, proto, via)
	if !ok {
		return nil, fmt.Errorf("backend %s of %s is not in the data plane", via, addr)
	}
	mark, err := tcprobe.Mark(idx)
	if err != nil {
		return nil, err
	}
	local, err := d.source(dst.Addr(), mark)
	if err != nil {
		return nil, err
	}
	nd := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) }); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK: %w", serr)
		}
		return nil
	}}
	if local.IsValid() {
		nd.LocalAddr = localAddr(network, local)
	}
	return nd, nil
}

// source checks that a probe to vip leaves through the interface, where
// tc_probe sends it on, and returns the source it must be bound to: none
// when the route gives one, the interface's own address when vip is a
// local address (the probe then meets tc_probe on loopback; the backend
// must answer over the wire, not to itself).
func (d *Dialer) source(vip netip.Addr, mark uint32) (netip.Addr, error) {
	routes, err := netlink.RouteGetWithOptions(vip.AsSlice(), &netlink.RouteGetOptions{Mark: mark})
	if errors.Is(err, unix.ENETUNREACH) || err == nil && len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route to %s: the host needs one through %s (a default route does)", vip, d.Iface.Name)
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("route to %s: %w", vip, err)
	}
	r := routes[0]
	if r.Type == unix.RTN_LOCAL {
		src := netif.Addr4(d.Iface.Name)
		if vip.Is6() {
			src = netif.Addr6(d.Iface.Name)
		}
		if !src.IsValid() {
			return netip.Addr{}, fmt.Errorf("%s is local here, and %s has no address of its family to send from", vip, d.Iface.Name)
		}
		if vip.Is4() {
			if err := d.acceptLocal(vip); err != nil {
				return netip.Addr{}, err
			}
		}
		return src, nil
	}
	if r.LinkIndex != d.Iface.Index {
		name := fmt.Sprint(r.LinkIndex)
		if ifi, err := net.InterfaceByIndex(r.LinkIndex); err == nil {
			name = ifi.Name
		}
		return netip.Addr{}, fmt.Errorf("the route to %s leaves through %s, not %s, where the data plane is", vip, name, d.Iface.Name)
	}
	return netip.Addr{}, nil
}

// acceptLocal makes the interface accept IPv4 packets from this host's
// own addresses: the backend answers a probe to a VIP this node holds
// (the master of a pair) from that VIP, which Linux drops as a martian
// otherwise. It is set once, and logged.
func (d *Dialer) acceptLocal(vip netip.Addr) error {
	d.acceptMu.Lock()
	defer d.acceptMu.Unlock()
	if d.acceptSet {
		return nil
	}
	path := filepath.Join("/proc/sys/net/ipv4/conf", d.Iface.Name, "accept_local")
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
		d.acceptSet = true
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("%s is local here, and its answers need net.ipv4.conf.%s.accept_local=1: %w", vip, d.Iface.Name, err)
	}
	d.acceptSet, d.acceptWrote = true, true
	if d.Log != nil {
		d.Log.Info("set accept_local: checks via a vip this node holds get their answers from it", "iface", d.Iface.Name, "vip", vip)
	}
	return nil
}

// Close gives back what the Dialer changed: accept_local goes back to 0
// if the Dialer turned it on (a value the host had is left alone).
func (d *Dialer) Close() error {
	d.acceptMu.Lock()
	defer d.acceptMu.Unlock()
	if !d.acceptWrote {
		return nil
	}
	path := filepath.Join("/proc/sys/net/ipv4/conf", d.Iface.Name, "accept_local")
	if err := os.WriteFile(path, []byte("0"), 0o644); err != nil {
		return fmt.Errorf("restore net.ipv4.conf.%s.accept_local=0: %w", d.Iface.Name, err)
	}
	d.acceptSet, d.acceptWrote = false, false
	if d.Log != nil {
		d.Log.Info("restored accept_local=0", "iface", d.Iface.Name)
	}
	return nil
}

func localAddr(network string, a netip.Addr) net.Addr {
	if strings.HasPrefix(network, "udp") {
		return net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0))
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0))
}
