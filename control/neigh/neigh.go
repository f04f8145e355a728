// Package neigh resolves backends' next-hop MAC addresses from the
// kernel's route and neighbour tables, and caches them off the caller's
// path, with backoff for those that do not resolve.
package neigh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// NetlinkResolver reads the kernel's route and neighbour tables, nudging
// the kernel to resolve a missing neighbour with one UDP datagram to the
// discard port.
type NetlinkResolver struct {
	Wait time.Duration // how long to wait for resolution; default 1s
}

// Resolve finds addr's next hop and its MAC address.
func (r NetlinkResolver) Resolve(ctx context.Context, addr netip.Addr) (net.HardwareAddr, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("resolve mac of %s: no route: %v", addr, err)
	}
	hop := addr
	if gw, ok := netip.AddrFromSlice(routes[0].Gw); ok && routes[0].Gw != nil {
		hop = gw.Unmap()
	}
	link := routes[0].LinkIndex
	family := netlink.FAMILY_V4
	if hop.Is6() {
		family = netlink.FAMILY_V6
	}
	lookup := func() net.HardwareAddr {
		neighs, err := netlink.NeighList(link, family)
		if err != nil {
			return nil
		}
		for _, n := range neighs {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == hop && len(n.HardwareAddr) == 6 &&
				n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
				return n.HardwareAddr
			}
		}
		return nil
	}
	if mac := lookup(); mac != nil {
		return mac, nil
	}
	if c, err := net.Dial("udp", netip.AddrPortFrom(hop, 9).String()); err == nil {
		_, _ = c.Write([]byte{0})
		c.Close()
	}
	wait := r.Wait
	if wait == 0 {
		wait = time.Second
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if mac := lookup(); mac != nil {
			return mac, nil
		}
	}
	return nil, errors.New("resolve mac of " + addr.String() + " via " + hop.String() + ": no neighbour entry (is it reachable? pass --mac)")
}
