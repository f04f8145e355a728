// Package netif reads the addresses of the data plane's interface: a
// node's address, its BGP router ID and next hop, and the source of
// health probes sent through the data plane.
package netif

import (
	"net"
	"net/netip"
)

// Addr is the interface's first address that is not link-local, of
// either family, or none.
func Addr(name string) netip.Addr {
	return first(name, func(a netip.Addr) bool { return true })
}

// Addr4 is the interface's first IPv4 address, or none.
func Addr4(name string) netip.Addr {
	return first(name, netip.Addr.Is4)
}

// Addr6 is the interface's first global or unique-local IPv6 address,
// or none.
func Addr6(name string) netip.Addr {
	return first(name, func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() })
}

func first(name string, want func(netip.Addr) bool) netip.Addr {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}
	}
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLinkLocalUnicast() && want(p.Addr()) {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// AddrText is Addr as text, or "" when the interface has none.
func AddrText(name string) string {
	if a := Addr(name); a.IsValid() {
		return a.String()
	}
	return ""
}
