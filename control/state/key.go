package state

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Limits of the desired state. They are the data plane's (bpf/sluice.h):
// control/reconcile's tests pin each to the loader's.
const (
	MaxVIPs     = 1024
	MaxBackends = 4096 // entries in all; index 0 is reserved
	MaxRingSize = 655373
	MaxWeight   = 1 << 16
)

// Forwarding modes of a VIP (VIP.Forward).
const (
	ForwardIPIP = "ipip"
	ForwardGUE  = "gue"
	ForwardDSR  = "dsr"
)

// Defaults the data plane applies when a VIP names none.
const (
	DefaultGUEPort    = 6080
	DefaultUDPTimeout = 30 * time.Second
)

// ParseForward checks a forwarding mode and returns its canonical name.
func ParseForward(s string) (string, error) {
	switch f := strings.ToLower(s); f {
	case ForwardIPIP, ForwardGUE, ForwardDSR:
		return f, nil
	}
	return "", fmt.Errorf("forward mode %q: want ipip, gue or dsr", s)
}

// Encapsulates reports whether forwarding mode f wraps packets in an
// outer IP header.
func Encapsulates(f string) bool { return f == ForwardIPIP || f == ForwardGUE }

// Proto is a VIP's L4 protocol, by its IANA number.
type Proto uint8

// Protocols a VIP can serve.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp or udp", s)
}

// VIPKey names a virtual service. Port 0 serves every port.
type VIPKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

// String is the key's canonical form, ADDR:PORT/PROTO.
func (k VIPKey) String() string { return FormatVIPKey(k) }

// ParseVIPKey parses "10.0.0.1:80/tcp" or "[2001:db8::1]:443/tcp".
func ParseVIPKey(s string) (VIPKey, error) {
	ap, proto, ok := strings.Cut(s, "/")
	if !ok {
		return VIPKey{}, fmt.Errorf("vip %q: want ADDR:PORT/PROTO, e.g. 10.0.0.100:80/tcp or [2001:db8::1]:443/tcp", s)
	}
	p, err := ParseProto(proto)
	if err != nil {
		return VIPKey{}, fmt.Errorf("vip %q: %w", s, err)
	}
	host, port, err := net.SplitHostPort(ap)
	if err != nil {
		return VIPKey{}, fmt.Errorf("vip %q: want ADDR:PORT/PROTO: %v", s, err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return VIPKey{}, fmt.Errorf("vip %q: %q is not an IP address", s, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return VIPKey{}, fmt.Errorf("vip %q: port %q is not a number from 0 to 65535", s, port)
	}
	return VIPKey{Addr: addr, Port: uint16(n), Proto: p}, nil
}

// FormatVIPKey writes the canonical form of a key.
func FormatVIPKey(k VIPKey) string {
	return netip.AddrPortFrom(k.Addr, k.Port).String() + "/" + k.Proto.String()
}

// ParseBackend parses a VIP key and the address of one of its backends,
// as requests name them.
func ParseBackend(vip, addr string) (VIPKey, netip.Addr, error) {
	k, err := ParseVIPKey(vip)
	if err != nil {
		return VIPKey{}, netip.Addr{}, err
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return VIPKey{}, netip.Addr{}, fmt.Errorf("backend address %q: not an IP address", addr)
	}
	return k, a, nil
}
