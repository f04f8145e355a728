// Package bgp announces this node's VIP addresses to its routers: route
// health injection. An embedded GoBGP speaker that only dials out carries
// one /32 or /128 per address, next hop self, while the rules of Decide
// say the node can serve it, and withdraws it when they no longer do.
package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults of the speaker.
const (
	DefaultPort          = 179
	DefaultHold          = 3 * time.Second // the lowest hold time RFC 4271 allows
	DefaultBFDInterval   = 100 * time.Millisecond
	DefaultBFDMultiplier = 3
	DefaultLearn         = 2 * time.Second
	DefaultDrain         = 5 * time.Second
	// DefaultMaxPrefixes bounds the routes a router may send per family
	// (the speaker imports none of them; see Config.MaxPrefixes).
	DefaultMaxPrefixes = 1000
	// MaxPasswordLen is TCP MD5's key length limit (TCP_MD5SIG_MAXKEYLEN).
	MaxPasswordLen = 80
)

// GracefulShutdown is the well-known community GRACEFUL_SHUTDOWN
// (RFC 8326, 65535:0): a router that honours it lowers the route's
// preference, so traffic moves before the withdrawal.
const GracefulShutdown uint32 = 0xFFFF0000

// Peer is one router to dial.
type Peer struct {
	Addr netip.AddrPort
	ASN  uint32
}

func (p Peer) String() string { return fmt.Sprintf("%s@%d", p.Addr, p.ASN) }

// Config configures the speaker.
type Config struct {
	ASN      uint32
	RouterID netip.Addr // default: the first IPv4 address of the interface
	Peers    []Peer
	Hold     time.Duration // BGP hold time; keepalives at a third of it
	// NextHop is announced for IPv4 routes (default: the address the
	// session leaves from); NextHop6 for IPv6 ones (default: over an
	// IPv6 session, its own address; the daemon gives sessions over
	// IPv4 the interface's first IPv6 address).
	NextHop, NextHop6 netip.Addr
	Communities       []uint32
	BFD               bool
	BFDInterval       time.Duration
	BFDMultiplier     int
	// Learn is how long after start nothing is announced, so that the
	// connection table holds the flows other nodes carry before routers
	// send any here.
	Learn time.Duration
	// Drain is how long the data plane keeps forwarding after the
	// withdrawal on SIGTERM, before it is detached.
	Drain time.Duration
	// GracefulShutdown tags routes with GRACEFUL_SHUTDOWN during a drain
	// before they are withdrawn.
	GracefulShutdown bool
	// Iface is the interface BFD is bound to.
	Iface string
	// MaxPrefixes is how many routes of a family a router may send
	// before its session is shut down (0: DefaultMaxPrefixes).
	MaxPrefixes uint32
	// Password, when set, signs every session with TCP MD5 (RFC 2385).
	Password string
}

// ParsePeer parses ADDR[:PORT]@ASN (an IPv6 address with a port is
// written [ADDR]:PORT@ASN).
func ParsePeer(s string) (Peer, error) {
	host, asn, ok := strings.Cut(s, "@")
	if !ok {
		return Peer{}, fmt.Errorf("--bgp-peer %q: want ADDR[:PORT]@ASN", s)
	}
	n, err := ParseASN(asn)
	if err != nil {
		return Peer{}, fmt.Errorf("--bgp-peer %q: %w", s, err)
	}
	if ap, err := netip.ParseAddrPort(host); err == nil {
		if ap.Port() == 0 {
			return Peer{}, fmt.Errorf("--bgp-peer %q: port 0", s)
		}
		return Peer{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ASN: n}, nil
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil || a.Zone() != "" {
		return Peer{}, fmt.Errorf("--bgp-peer %q: %q is not an IP address (or [IPv6]:port)", s, host)
	}
	return Peer{Addr: netip.AddrPortFrom(a.Unmap(), DefaultPort), ASN: n}, nil
}

// ParseASN parses a 4-byte AS number (1..4294967294; 0 and 65535's
// 4-byte twin 4294967295 are reserved).
func ParseASN(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n == 4294967295 {
		return 0, fmt.Errorf("AS number %q: want 1..4294967294", s)
	}
	return uint32(n), nil
}

// ParseCommunity parses A:B (each 0..65535) or a well-known name
// (graceful-shutdown, no-export, no-advertise, blackhole).
func ParseCommunity(s string) (uint32, error) {
	switch strings.ToLower(s) {
	case "graceful-shutdown", "graceful_shutdown":
		return GracefulShutdown, nil
	case "no-export":
		return 0xFFFFFF01, nil
	case "no-advertise":
		return 0xFFFFFF02, nil
	case "blackhole":
		return 0xFFFF029A, nil
	}
	a, b, ok := strings.Cut(s, ":")
	x, err1 := strconv.ParseUint(a, 10, 16)
	y, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("--bgp-community %q: want A:B with each 0..65535, or a well-known name", s)
	}
	return uint32(x)<<16 | uint32(y), nil
}

// FormatCommunity writes c as A:B.
func FormatCommunity(c uint32) string { return fmt.Sprintf("%d:%d", c>>16, c&0xFFFF) }

// Complete validates the configuration, naming the flag at fault, and
// fills in the defaults.
func (c *Config) Complete() error {
	if c.ASN == 0 {
		return errors.New("--bgp-asn: required with --bgp-peer")
	}
	if len(c.Peers) == 0 {
		return errors.New("--bgp-peer: at least one is required with --bgp-asn")
	}
	seen := map[netip.Addr]bool{}
	for _, p := range c.Peers {
		if seen[p.Addr.Addr()] {
			return fmt.Errorf("--bgp-peer %s: given twice", p.Addr.Addr())
		}
		seen[p.Addr.Addr()] = true
	}
	if c.RouterID.IsValid() && !c.RouterID.Is4() {
		return fmt.Errorf("--bgp-router-id %s: must be an IPv4 address", c.RouterID)
	}
	if c.Hold == 0 {
		c.Hold = DefaultHold
	}
	if c.Hold < 3*time.Second || c.Hold > 65535*time.Second || c.Hold%time.Second != 0 {
		return fmt.Errorf("--bgp-hold %v: want whole seconds, 3s..65535s (RFC 4271)", c.Hold)
	}
	if c.BFDInterval == 0 {
		c.BFDInterval = DefaultBFDInterval
	}
	if c.BFDInterval < 10*time.Millisecond || c.BFDInterval > 10*time.Second {
		return fmt.Errorf("--bgp-bfd-interval %v: want 10ms..10s", c.BFDInterval)
	}
	if c.BFDMultiplier == 0 {
		c.BFDMultiplier = DefaultBFDMultiplier
	}
	if c.BFDMultiplier < 2 || c.BFDMultiplier > 255 {
		return fmt.Errorf("--bgp-bfd-multiplier %d: want 2..255", c.BFDMultiplier)
	}
	if c.Learn < 0 {
		return fmt.Errorf("--bgp-learn %v: must not be negative", c.Learn)
	}
	if c.MaxPrefixes == 0 {
		c.MaxPrefixes = DefaultMaxPrefixes
	}
	if n := len(c.Password); n > MaxPasswordLen || strings.ContainsRune(c.Password, 0) {
		return fmt.Errorf("--bgp-password: %d bytes; TCP MD5 takes at most %d, no NUL", n, MaxPasswordLen)
	}
	if c.Drain < 0 {
		return fmt.Errorf("--bgp-drain %v: must not be negative", c.Drain)
	}
	if c.NextHop.IsValid() && !c.NextHop.Is4() {
		return fmt.Errorf("--bgp-next-hop %s: must be an IPv4 address (IPv6 routes take --bgp-next-hop6)", c.NextHop)
	}
	if a := c.NextHop6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a.IsMulticast()) {
		return fmt.Errorf("--bgp-next-hop6 %s: must be a global or unique-local IPv6 address", a)
	}
	return nil
}

// NoNextHop6 says that IPv6 routes would go out with no valid next hop:
// a session runs over IPv4 (which gives them its IPv4 address) and no
// IPv6 next hop is set. Such routes are withheld (ReasonNoNextHop6).
func (c *Config) NoNextHop6() bool {
	if c.NextHop6.IsValid() {
		return false
	}
	for _, p := range c.Peers {
		if p.Addr.Addr().Unmap().Is4() {
			return true
		}
	}
	return false
}
