package state

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sluicelb/sluice/control/maglev"
)

// Every rule of the desired state is here, and only here: the store
// runs them on every commit (after Normalize), the CLI on what it is
// about to send (its flags name the fields). Each returns a *FieldError.

// Validate checks every field and names the first bad one.
func (s *State) Validate() error {
	if len(s.VIPs) > MaxVIPs {
		return refuse("vips", nil, "%d, at most %d", len(s.VIPs), MaxVIPs)
	}
	seen := map[VIPKey]bool{}
	backends := 0
	for i, v := range s.VIPs {
		k, err := ParseVIPKey(v.VIP)
		if err != nil {
			return at(fmt.Sprintf("vips[%d]", i), refuse("vip", nil, "%v", err))
		}
		where := fmt.Sprintf("vips[%d] (%s)", i, v.VIP)
		if seen[k] {
			return at(where, refuse("", nil, "listed twice"))
		}
		seen[k] = true
		if err := v.validate(k); err != nil {
			return at(where, err)
		}
		backends += len(v.Backends)
	}
	if backends >= MaxBackends {
		return refuse("backends", nil, "%d in all, at most %d", backends, MaxBackends-1)
	}
	return nil
}

// Validate checks one VIP, its backends included, as a commit would:
// unset fields take their defaults first.
func (v VIP) Validate() error {
	k, err := ParseVIPKey(v.VIP)
	if err != nil {
		return refuse("vip", nil, "%v", err)
	}
	v.Backends = slices.Clone(v.Backends)
	for j := range v.Backends {
		v.Backends[j] = v.Backends[j].clone()
	}
	v.normalize()
	return v.validate(k)
}

// validate checks one VIP whose key is k.
func (v *VIP) validate(k VIPKey) error {
	fwd, err := ParseForward(v.Forward)
	if err != nil {
		return refuse("forward", nil, "%v", err)
	}
	if v.GUEPort != 0 && fwd != ForwardGUE {
		return refuse("gue_port", v.GUEPort, "only with forward gue")
	}
	if v.RingSize < 2 || v.RingSize > MaxRingSize || !maglev.IsPrime(v.RingSize) {
		return refuse("ring_size", v.RingSize, "must be a prime up to %d (e.g. 4099, 65537, 655373)", MaxRingSize)
	}
	if v.MinActive < 1 {
		return refuse("min_active", v.MinActive, "must be at least 1")
	}
	if v.UDPTimeout <= 0 {
		return refuse("udp_timeout", time.Duration(v.UDPTimeout), "must be positive")
	}
	if err := v.validatePolicy(); err != nil {
		return err
	}
	if via := strings.ToLower(v.CheckVia); via != "" && via != CheckViaAddr && via != CheckViaVIP {
		return refuse("check_via", fmt.Sprintf("%q", v.CheckVia), "want addr or vip")
	}
	addrs := map[netip.Addr]bool{}
	for j, b := range v.Backends {
		bw := fmt.Sprintf("backends[%d]", j)
		a, err := netip.ParseAddr(b.Addr)
		if err == nil && addrs[a] {
			return at(bw, refuse("addr", a, "listed twice"))
		}
		addrs[a] = true
		if err == nil && k.Addr.Is6() && a.Is4() && Encapsulates(fwd) {
			return at(bw, refuse("addr", a, "an IPv6 VIP cannot be encapsulated to an IPv4 backend"))
		}
		if err := b.validate(k); err != nil {
			return at(bw, err)
		}
	}
	if v.Primary != "" {
		a, err := netip.ParseAddr(v.Primary)
		if err != nil || !addrs[a] {
			return refuse("primary", fmt.Sprintf("%q", v.Primary), "not one of its backends")
		}
	}
	if uint32(len(v.Backends)) > v.RingSize {
		return refuse("", nil, "%d backends do not fit a ring of %d", len(v.Backends), v.RingSize)
	}
	return nil
}

// validatePolicy checks the policy and the settings that go with it.
func (v *VIP) validatePolicy() error {
	switch strings.ToLower(v.Policy) {
	case PolicyMaglev:
		if v.PromoteCmd != "" || v.PromoteURL != "" || v.DemoteCmd != "" || v.Failback || v.Primary != "" {
			return refuse("", nil, "promotion settings need policy failover")
		}
	case PolicyFailover:
		if v.HookTimeout <= 0 {
			return refuse("hook_timeout", time.Duration(v.HookTimeout), "must be positive")
		}
		if v.PromoteURL != "" {
			if u, err := url.Parse(v.PromoteURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return refuse("promote_url", fmt.Sprintf("%q", v.PromoteURL), "want an http(s) URL")
			}
		}
	default:
		return refuse("policy", fmt.Sprintf("%q", v.Policy), "want maglev or failover")
	}
	return nil
}

// Validate checks one backend of the VIP whose key is k as a commit
// would (unset fields take their defaults first), but for what depends on
// the VIP's other fields and backends.
func (b Backend) Validate(k VIPKey) error {
	b = b.clone()
	b.normalize("")
	return b.validate(k)
}

// validate checks one backend of the VIP whose key is k.
func (b *Backend) validate(k VIPKey) error {
	if a, err := netip.ParseAddr(b.Addr); err != nil || a.Zone() != "" || a.Is4In6() {
		return refuse("addr", fmt.Sprintf("%q", b.Addr), "not an IP address")
	}
	if b.Weight > MaxWeight {
		return refuse("weight", b.Weight, "at most %d", MaxWeight)
	}
	if b.MAC != "" {
		if m, err := net.ParseMAC(b.MAC); err != nil || len(m) != 6 {
			return refuse("mac", fmt.Sprintf("%q", b.MAC), "not an Ethernet address")
		}
	}
	if err := b.Check.validate(k); err != nil {
		return under("check", err)
	}
	if b.SlowStart < 0 || time.Duration(b.SlowStart) > MaxSlowStart {
		return refuse("slow_start", time.Duration(b.SlowStart), "want 0 to %v", MaxSlowStart)
	}
	if err := b.Agent.validate(); err != nil {
		return under("agent", err)
	}
	if err := b.Load.validate(b.Addr); err != nil {
		return under("load", err)
	}
	return nil
}

func (a *Agent) validate() error {
	switch {
	case a == nil:
		return nil
	case a.Port == 0:
		return refuse("port", nil, "want 1 to 65535")
	case a.Interval < Duration(MinAgentInterval):
		return refuse("interval", time.Duration(a.Interval), "at least %v", MinAgentInterval)
	case len(a.Send) > MaxAgentSend || strings.ContainsRune(a.Send, 0):
		return refuse("send", nil, "at most %d bytes, no NUL", MaxAgentSend)
	}
	return nil
}

// validate checks the backend at addr's load signal: its page is the
// backend's own (scraped from its address, never another host's).
func (l *Load) validate(addr string) error {
	if l == nil {
		return nil
	}
	ls, err := ParseLoadMetric(l.Metric)
	if err != nil {
		return refuse("metric", nil, "%v", err)
	}
	u, _ := url.Parse(ls.URL) // ParseLoadMetric parsed it
	if h, err := netip.ParseAddr(u.Hostname()); err != nil || h.Unmap() != netip.MustParseAddr(addr).Unmap() {
		return refuse("metric", fmt.Sprintf("%q", l.Metric), "the page must be the backend's own: want its address, %s, as the URL's host", addr)
	}
	switch {
	case !(l.Target > 0) || math.IsInf(l.Target, 0):
		return refuse("target", l.Target, "must be a positive number")
	case l.Interval < Duration(MinLoadInterval):
		return refuse("interval", time.Duration(l.Interval), "at least %v", MinLoadInterval)
	}
	return nil
}

// validate checks a check of a backend of the VIP whose key is k.
func (c Check) validate(k VIPKey) error {
	t, err := ParseCheckType(c.Type)
	if err != nil {
		return refuse("type", nil, "%v", err)
	}
	if c.Codes != "" {
		if err := ParseCodes(c.Codes); err != nil {
			return refuse("codes", nil, "%v", err)
		}
	}
	if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
		return refuse("path", fmt.Sprintf("%q", c.Path), "must start with /")
	}
	if c.OnError != "" && c.OnError != "fail-check" && c.OnError != "mark-down" {
		return refuse("on_error", fmt.Sprintf("%q", c.OnError), "want fail-check or mark-down")
	}
	if (c.Service != "" || c.TLS) && t != CheckGRPC {
		return refuse("service, tls", nil, "only for grpc checks, not %s", t)
	}
	if len(c.Service) > 255 || strings.IndexFunc(c.Service, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
		return refuse("service", fmt.Sprintf("%q", c.Service), "want up to 255 printable ASCII characters")
	}
	if err := c.validateTiming(); err != nil {
		return err
	}
	if err := c.validateVia(t, k); err != nil {
		return err
	}
	if k.Port == 0 && c.Port == 0 && t != CheckNone {
		return refuse("port", nil, "required for a VIP on port 0 (or check type none)")
	}
	return nil
}

// validateVia checks that a check via the VIP (key k) can go where the
// VIP's traffic goes: to a port the VIP serves, in its protocol.
func (c Check) validateVia(t CheckType, k VIPKey) error {
	switch strings.ToLower(c.Via) {
	case "", CheckViaAddr:
		return nil
	case CheckViaVIP:
	default:
		return refuse("via", fmt.Sprintf("%q", c.Via), "want addr or vip")
	}
	proto := TCP
	if t == CheckUDP {
		proto = UDP
	}
	switch {
	case t == CheckNone:
		return nil
	case proto != k.Proto:
		return refuse("type", t, "a check via the vip speaks the vip's protocol, %s", k.Proto)
	case k.Port != 0 && c.Port != 0 && c.Port != k.Port:
		return refuse("port", c.Port, "a check via the vip goes to the vip's port, %d", k.Port)
	case k.Port == 0 && c.Port == 0:
		return refuse("port", nil, "a check via a vip of every port needs one")
	}
	return nil
}

// clone copies what b points to, so that normalizing the copy leaves b
// as it was.
func (b Backend) clone() Backend {
	if b.Agent != nil {
		a := *b.Agent
		b.Agent = &a
	}
	if b.Load != nil {
		l := *b.Load
		b.Load = &l
	}
	return b
}
