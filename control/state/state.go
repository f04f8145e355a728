// Package state is sluice's desired state: the model an operator edits
// (VIPs, backends, checks), validated in one place, and its durable home —
// the bbolt store with revisions, the archive of previous states, checksummed
// snapshots and the availability timeline.
package state

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicelb/sluice/control/maglev"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
)

// Defaults of the desired state.
const (
	DefaultRingSize  = 65537
	DefaultMinActive = 1
	DefaultWeight    = 1
)

// Duration is a time.Duration written as "100ms" in JSON and YAML.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// State is the desired state: what the operator asked for. Revision grows
// by one with every committed change.
type State struct {
	Revision uint64 `json:"revision" yaml:"revision,omitempty"`
	VIPs     []VIP  `json:"vips" yaml:"vips"`
}

// VIP is one virtual service.
type VIP struct {
	VIP     string `json:"vip" yaml:"vip"` // ADDR:PORT/PROTO
	Forward string `json:"forward" yaml:"forward"`
	// GUEPort is forward gue's UDP destination (default loader.DefaultGUEPort).
	GUEPort    uint16    `json:"gue_port,omitempty" yaml:"gue_port,omitempty"`
	RingSize   uint32    `json:"ring_size" yaml:"ring_size"`
	MinActive  int       `json:"min_active" yaml:"min_active"`
	UDPTimeout Duration  `json:"udp_timeout" yaml:"udp_timeout"`
	Backends   []Backend `json:"backends" yaml:"backends"`
	// CheckVia is the check.via its backends take when they name none:
	// CheckViaVIP, or "" (their own address).
	CheckVia string `json:"check_via,omitempty" yaml:"check_via,omitempty"`

	// Policy is "maglev" (spread over every usable backend) or
	// "failover" (exactly one primary receives traffic).
	Policy string `json:"policy" yaml:"policy"`
	// Failover VIPs: hooks run on promotion (exit 0 / HTTP 2xx is
	// success) and on a recovered old primary's demotion.
	PromoteCmd  string   `json:"promote_cmd,omitempty" yaml:"promote_cmd,omitempty"`
	PromoteURL  string   `json:"promote_url,omitempty" yaml:"promote_url,omitempty"`
	DemoteCmd   string   `json:"demote_cmd,omitempty" yaml:"demote_cmd,omitempty"`
	HookTimeout Duration `json:"hook_timeout,omitempty" yaml:"hook_timeout,omitempty"`
	Failback    bool     `json:"failback,omitempty" yaml:"failback,omitempty"`
	// Primary and Epoch are the coordinator's decisions, kept with the
	// state so that they survive restarts; the epoch never goes back.
	Primary string `json:"primary,omitempty" yaml:"primary,omitempty"`
	Epoch   uint64 `json:"epoch,omitempty" yaml:"epoch,omitempty"`
}

// Policies of a VIP.
const (
	PolicyMaglev   = "maglev"
	PolicyFailover = "failover"
)

// DefaultHookTimeout bounds promotion and demotion hooks.
const DefaultHookTimeout = 10 * time.Second

// Backend is one backend of a VIP.
type Backend struct {
	Addr     string `json:"addr" yaml:"addr"`
	Weight   uint32 `json:"weight" yaml:"weight"`
	Priority int    `json:"priority,omitempty" yaml:"priority,omitempty"` // failover VIPs: higher is promoted first
	Drain    bool   `json:"drain,omitempty" yaml:"drain,omitempty"`
	Disabled bool   `json:"disabled,omitempty" yaml:"disabled,omitempty"`
	Standby  bool   `json:"standby,omitempty" yaml:"standby,omitempty"`
	MAC      string `json:"mac,omitempty" yaml:"mac,omitempty"`
	Check    Check  `json:"check" yaml:"check"`
	// Agent, when set, asks the backend's agent (HAProxy's agent-check)
	// for its weight and state; Load scales its share of new flows down
	// by a load metric; SlowStart ramps its weight from 10% to 100% each
	// time it becomes usable.
	Agent     *Agent   `json:"agent,omitempty" yaml:"agent,omitempty"`
	Load      *Load    `json:"load,omitempty" yaml:"load,omitempty"`
	SlowStart Duration `json:"slow_start,omitempty" yaml:"slow_start,omitempty"`
}

// Agent is a backend's agent check.
type Agent struct {
	Port     uint16   `json:"port" yaml:"port"`
	Interval Duration `json:"interval" yaml:"interval"` // default: the health check's
	Send     string   `json:"send,omitempty" yaml:"send,omitempty"`
}

// Load is a backend's load metric: Metric is URL#SERIES; at or under
// Target the backend keeps its weight, above it its share of new flows
// falls in proportion.
type Load struct {
	Metric   string   `json:"metric" yaml:"metric"`
	Target   float64  `json:"target" yaml:"target"`
	Interval Duration `json:"interval" yaml:"interval"` // default: the health check's
}

// Defaults and bounds of agent checks, load metrics and slow start.
const (
	DefaultLoadTarget = 1
	MaxAgentSend      = 256
	MaxSlowStart      = time.Hour
)

// Check is a backend's health check.
type Check struct {
	Type      string `json:"type" yaml:"type"`
	Port      uint16 `json:"port,omitempty" yaml:"port,omitempty"` // default: the service port
	Path      string `json:"path,omitempty" yaml:"path,omitempty"`
	Method    string `json:"method,omitempty" yaml:"method,omitempty"`
	Codes     string `json:"codes,omitempty" yaml:"codes,omitempty"`
	Body      string `json:"body,omitempty" yaml:"body,omitempty"`
	TLSVerify bool   `json:"tls_verify,omitempty" yaml:"tls_verify,omitempty"`
	Payload   string `json:"payload,omitempty" yaml:"payload,omitempty"`
	// Service is a grpc check's grpc.health.v1 service ("" asks about
	// the server); TLS makes it speak TLS (TLSVerify checks the
	// certificate).
	Service   string   `json:"service,omitempty" yaml:"service,omitempty"`
	TLS       bool     `json:"tls,omitempty" yaml:"tls,omitempty"`
	Interval  Duration `json:"interval" yaml:"interval"`
	Timeout   Duration `json:"timeout" yaml:"timeout"`
	FastInter Duration `json:"fastinter,omitempty" yaml:"fastinter,omitempty"`
	Rise      int      `json:"rise" yaml:"rise"`
	Fall      int      `json:"fall" yaml:"fall"`
	// OnError is fail-check (a failure counts towards fall; the
	// default) or mark-down (a hard failure marks the backend down at
	// once: health.IsHard).
	OnError string `json:"on_error,omitempty" yaml:"on_error,omitempty"`
	// Via is CheckViaAddr (the probe goes to the backend's own address)
	// or CheckViaVIP (to the VIP, through the data plane to this
	// backend, as its traffic goes); "" takes the VIP's check_via.
	Via string `json:"via,omitempty" yaml:"via,omitempty"`
}

// Where a check's probe goes (Check.Via, VIP.CheckVia).
const (
	CheckViaAddr = "addr"
	CheckViaVIP  = "vip"
)

// ParseVIPKey parses "10.0.0.1:80/tcp" or "[2001:db8::1]:443/tcp".
func ParseVIPKey(s string) (loader.VIPKey, error) {
	ap, proto, ok := strings.Cut(s, "/")
	if !ok {
		return loader.VIPKey{}, fmt.Errorf("vip %q: want ADDR:PORT/PROTO, e.g. 10.0.0.100:80/tcp or [2001:db8::1]:443/tcp", s)
	}
	p, err := loader.ParseProto(proto)
	if err != nil {
		return loader.VIPKey{}, fmt.Errorf("vip %q: %w", s, err)
	}
	host, port, err := net.SplitHostPort(ap)
	if err != nil {
		return loader.VIPKey{}, fmt.Errorf("vip %q: want ADDR:PORT/PROTO: %v", s, err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return loader.VIPKey{}, fmt.Errorf("vip %q: %q is not an IP address", s, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return loader.VIPKey{}, fmt.Errorf("vip %q: port %q is not a number from 0 to 65535", s, port)
	}
	return loader.VIPKey{Addr: addr, Port: uint16(n), Proto: p}, nil
}

// FormatVIPKey writes the canonical form of a key.
func FormatVIPKey(k loader.VIPKey) string {
	return netip.AddrPortFrom(k.Addr, k.Port).String() + "/" + k.Proto.String()
}

// Normalize fills defaults and canonicalises names, so equal intents
// compare equal. It does not validate.
func (s *State) Normalize() {
	for i := range s.VIPs {
		v := &s.VIPs[i]
		if k, err := ParseVIPKey(v.VIP); err == nil {
			v.VIP = FormatVIPKey(k)
		}
		v.Forward = strings.ToLower(v.Forward)
		if v.Forward == "" {
			v.Forward = "ipip"
		}
		if v.Forward == "gue" && v.GUEPort == 0 {
			v.GUEPort = loader.DefaultGUEPort
		}
		if v.RingSize == 0 {
			v.RingSize = DefaultRingSize
		}
		if v.MinActive == 0 {
			v.MinActive = DefaultMinActive
		}
		if v.UDPTimeout == 0 {
			v.UDPTimeout = Duration(loader.DefaultUDPTimeout)
		}
		v.Policy = strings.ToLower(v.Policy)
		if v.Policy == "" {
			v.Policy = PolicyMaglev
		}
		if v.CheckVia = strings.ToLower(v.CheckVia); v.CheckVia == CheckViaAddr {
			v.CheckVia = "" // the default, stored as such
		}
		if v.Policy == PolicyFailover && v.HookTimeout == 0 {
			v.HookTimeout = Duration(DefaultHookTimeout)
		}
		if a, err := netip.ParseAddr(v.Primary); err == nil {
			v.Primary = a.String()
		}
		for j := range v.Backends {
			b := &v.Backends[j]
			if a, err := netip.ParseAddr(b.Addr); err == nil {
				b.Addr = a.String()
			}
			if m, err := net.ParseMAC(b.MAC); err == nil {
				b.MAC = m.String()
			}
			c := &b.Check
			c.normalize(v.CheckVia)
			if b.Agent != nil && b.Agent.Interval == 0 {
				b.Agent.Interval = c.Interval
			}
			if b.Load != nil && b.Load.Interval == 0 {
				b.Load.Interval = c.Interval
			}
			if b.Load != nil && b.Load.Target == 0 {
				b.Load.Target = DefaultLoadTarget
			}
		}
		slices.SortFunc(v.Backends, func(a, b Backend) int { return strings.Compare(a.Addr, b.Addr) })
	}
	slices.SortFunc(s.VIPs, func(a, b VIP) int { return strings.Compare(a.VIP, b.VIP) })
}

// normalize fills a check's defaults; vipVia is its VIP's check_via.
func (c *Check) normalize(vipVia string) {
	c.Type = strings.ToLower(c.Type)
	if c.Type == "" {
		c.Type = string(health.TCP)
	}
	if c.OnError == "fail-check" {
		c.OnError = "" // the default, stored as such
	}
	if c.Via = strings.ToLower(c.Via); c.Via == "" {
		c.Via = vipVia // the VIP's, when the backend names none
	} else if c.Via == CheckViaAddr && vipVia == "" {
		c.Via = ""
	}
	if c.Interval == 0 {
		c.Interval = Duration(health.Defaults.Interval)
	}
	if c.Timeout == 0 {
		c.Timeout = Duration(health.Defaults.Timeout)
	}
	if c.Rise == 0 {
		c.Rise = health.Defaults.Rise
	}
	if c.Fall == 0 {
		c.Fall = health.Defaults.Fall
	}
}

// Validate checks every field and names the first bad one.
func (s *State) Validate() error {
	if len(s.VIPs) > loader.MaxVIPs {
		return fmt.Errorf("vips: %d, at most %d", len(s.VIPs), loader.MaxVIPs)
	}
	seen := map[loader.VIPKey]bool{}
	backends := 0
	for i, v := range s.VIPs {
		k, err := ParseVIPKey(v.VIP)
		if err != nil {
			return fmt.Errorf("vips[%d].vip: %w", i, err)
		}
		where := fmt.Sprintf("vips[%d] (%s)", i, v.VIP)
		if seen[k] {
			return fmt.Errorf("%s: listed twice", where)
		}
		seen[k] = true
		if err := v.validate(where, k); err != nil {
			return err
		}
		backends += len(v.Backends)
	}
	if backends >= loader.MaxBackends {
		return fmt.Errorf("backends: %d in all, at most %d", backends, loader.MaxBackends-1)
	}
	return nil
}

// validate checks one VIP (key k, named where in messages).
func (v *VIP) validate(where string, k loader.VIPKey) error {
	fwd, err := loader.ParseForward(v.Forward)
	if err != nil {
		return fmt.Errorf("%s.forward: %w", where, err)
	}
	if v.GUEPort != 0 && fwd != loader.ForwardGUE {
		return fmt.Errorf("%s.gue_port %d: only with forward gue", where, v.GUEPort)
	}
	if v.RingSize < 2 || v.RingSize > loader.MaxRingSize || !maglev.IsPrime(v.RingSize) {
		return fmt.Errorf("%s.ring_size %d: must be a prime up to %d (e.g. 4099, 65537, 655373)", where, v.RingSize, loader.MaxRingSize)
	}
	if v.MinActive < 1 {
		return fmt.Errorf("%s.min_active %d: must be at least 1", where, v.MinActive)
	}
	if v.UDPTimeout <= 0 {
		return fmt.Errorf("%s.udp_timeout %v: must be positive", where, time.Duration(v.UDPTimeout))
	}
	if err := v.validatePolicy(where); err != nil {
		return err
	}
	if v.CheckVia != "" && v.CheckVia != CheckViaAddr && v.CheckVia != CheckViaVIP {
		return fmt.Errorf("%s.check_via %q: want addr or vip", where, v.CheckVia)
	}
	addrs := map[netip.Addr]bool{}
	for j, b := range v.Backends {
		bw := fmt.Sprintf("%s.backends[%d]", where, j)
		a, err := netip.ParseAddr(b.Addr)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return fmt.Errorf("%s.addr %q: not an IP address", bw, b.Addr)
		}
		if addrs[a] {
			return fmt.Errorf("%s.addr %s: listed twice", bw, a)
		}
		addrs[a] = true
		if k.Addr.Is6() && a.Is4() && fwd.Encapsulates() {
			return fmt.Errorf("%s.addr %s: an IPv6 VIP cannot be encapsulated to an IPv4 backend", bw, a)
		}
		if err := b.validate(bw); err != nil {
			return err
		}
		if err := b.Check.validateVia(bw, k); err != nil {
			return err
		}
	}
	if v.Primary != "" {
		a, err := netip.ParseAddr(v.Primary)
		if err != nil || !addrs[a] {
			return fmt.Errorf("%s.primary %q: not one of its backends", where, v.Primary)
		}
	}
	if uint32(len(v.Backends)) > v.RingSize {
		return fmt.Errorf("%s: %d backends do not fit a ring of %d", where, len(v.Backends), v.RingSize)
	}
	return nil
}

// validatePolicy checks the policy and the settings that go with it.
func (v *VIP) validatePolicy(where string) error {
	switch v.Policy {
	case PolicyMaglev:
		if v.PromoteCmd != "" || v.PromoteURL != "" || v.DemoteCmd != "" || v.Failback || v.Primary != "" {
			return fmt.Errorf("%s: promotion settings need policy failover", where)
		}
	case PolicyFailover:
		if v.HookTimeout <= 0 {
			return fmt.Errorf("%s.hook_timeout %v: must be positive", where, time.Duration(v.HookTimeout))
		}
		if v.PromoteURL != "" {
			if u, err := url.Parse(v.PromoteURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("%s.promote_url %q: want an http(s) URL", where, v.PromoteURL)
			}
		}
	default:
		return fmt.Errorf("%s.policy %q: want maglev or failover", where, v.Policy)
	}
	return nil
}

// validate checks a backend's MAC and check (named bw in messages); its
// address is checked with its VIP's other backends.
func (b *Backend) validate(bw string) error {
	if b.MAC != "" {
		if m, err := net.ParseMAC(b.MAC); err != nil || len(m) != 6 {
			return fmt.Errorf("%s.mac %q: not an Ethernet address", bw, b.MAC)
		}
	}
	if err := validateCheck(b.Check); err != nil {
		return fmt.Errorf("%s.check.%w", bw, err)
	}
	if b.SlowStart < 0 || time.Duration(b.SlowStart) > MaxSlowStart {
		return fmt.Errorf("%s.slow_start %v: want 0 to %v", bw, time.Duration(b.SlowStart), MaxSlowStart)
	}
	if a := b.Agent; a != nil {
		switch {
		case a.Port == 0:
			return fmt.Errorf("%s.agent.port: want 1 to 65535", bw)
		case a.Interval <= 0:
			return fmt.Errorf("%s.agent.interval %v: must be positive", bw, time.Duration(a.Interval))
		case len(a.Send) > MaxAgentSend || strings.ContainsRune(a.Send, 0):
			return fmt.Errorf("%s.agent.send: at most %d bytes, no NUL", bw, MaxAgentSend)
		}
	}
	if l := b.Load; l != nil {
		if _, err := health.ParseLoadMetric(l.Metric); err != nil {
			return fmt.Errorf("%s.load.metric: %w", bw, err)
		}
		if !(l.Target > 0) || math.IsInf(l.Target, 0) {
			return fmt.Errorf("%s.load.target %v: must be a positive number", bw, l.Target)
		}
		if l.Interval <= 0 {
			return fmt.Errorf("%s.load.interval %v: must be positive", bw, time.Duration(l.Interval))
		}
	}
	return nil
}

func validateCheck(c Check) error {
	if _, err := health.ParseType(c.Type); err != nil {
		return fmt.Errorf("type: %w", err)
	}
	if c.Codes != "" {
		if err := health.ParseCodes(c.Codes); err != nil {
			return fmt.Errorf("codes: %w", err)
		}
	}
	if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
		return fmt.Errorf("path %q: must start with /", c.Path)
	}
	if c.OnError != "" && c.OnError != "fail-check" && c.OnError != "mark-down" {
		return fmt.Errorf("on_error %q: want fail-check or mark-down", c.OnError)
	}
	if (c.Service != "" || c.TLS) && c.Type != string(health.GRPC) {
		return fmt.Errorf("service, tls: only for grpc checks, not %s", c.Type)
	}
	if len(c.Service) > 255 || strings.IndexFunc(c.Service, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
		return fmt.Errorf("service %q: want up to 255 printable ASCII characters", c.Service)
	}
	s := health.Settings{Interval: time.Duration(c.Interval), Timeout: time.Duration(c.Timeout),
		FastInter: time.Duration(c.FastInter), Rise: c.Rise, Fall: c.Fall}
	if err := s.Validate(); err != nil {
		return err
	}
	return nil
}

// validateVia checks that a check via the VIP (key k) can go where the
// VIP's traffic goes: to a port the VIP serves, in its protocol.
func (c Check) validateVia(bw string, k loader.VIPKey) error {
	switch c.Via {
	case "", CheckViaAddr:
		return nil
	case CheckViaVIP:
	default:
		return fmt.Errorf("%s.check.via %q: want addr or vip", bw, c.Via)
	}
	t, _ := health.ParseType(c.Type)
	proto := loader.TCP
	if t == health.UDP {
		proto = loader.UDP
	}
	switch {
	case t == health.None:
		return nil
	case proto != k.Proto:
		return fmt.Errorf("%s.check.type %s: a check via the vip speaks the vip's protocol, %s", bw, t, k.Proto)
	case k.Port != 0 && c.Port != 0 && c.Port != k.Port:
		return fmt.Errorf("%s.check.port %d: a check via the vip goes to the vip's port, %d", bw, c.Port, k.Port)
	case k.Port == 0 && c.Port == 0:
		return fmt.Errorf("%s.check.port: a check via a vip of every port needs one", bw)
	}
	return nil
}

// Clone deep-copies a state.
func (s State) Clone() State {
	b, _ := json.Marshal(s)
	var out State
	_ = json.Unmarshal(b, &out)
	return out
}

// FindVIP returns the index of the VIP with key k, or -1.
func (s *State) FindVIP(k loader.VIPKey) int {
	for i, v := range s.VIPs {
		if vk, err := ParseVIPKey(v.VIP); err == nil && vk == k {
			return i
		}
	}
	return -1
}

// LookupVIP returns the index of the VIP with key k, or an ErrNotFound
// that names it.
func (s *State) LookupVIP(k loader.VIPKey) (int, error) {
	if i := s.FindVIP(k); i >= 0 {
		return i, nil
	}
	return -1, NotFound("vip %s: no such vip", FormatVIPKey(k))
}

// FindBackend returns the index of backend addr in v, or -1.
func (v *VIP) FindBackend(addr netip.Addr) int {
	for i, b := range v.Backends {
		if a, err := netip.ParseAddr(b.Addr); err == nil && a == addr {
			return i
		}
	}
	return -1
}

// HealthCheck is the health check of backend b of vip: to the backend's
// address, or to the VIP through the data plane (check via vip).
func (b Backend) HealthCheck(vip loader.VIPKey) health.Check {
	port := b.Check.Port
	if port == 0 {
		port = vip.Port
	}
	c := b.Check
	t, _ := health.ParseType(c.Type)
	addr := netip.MustParseAddr(b.Addr)
	target, via := netip.AddrPortFrom(addr, port), netip.Addr{}
	if c.Via == CheckViaVIP {
		target, via = netip.AddrPortFrom(vip.Addr, port), addr
	}
	return health.Check{
		Probe: health.Probe{Type: t, Addr: target, Via: via, Method: c.Method, Path: c.Path,
			Codes: c.Codes, BodyContain: c.Body, TLSVerify: c.TLSVerify, Payload: c.Payload, Service: c.Service, TLS: c.TLS},
		Settings: health.Settings{Interval: time.Duration(c.Interval), Timeout: time.Duration(c.Timeout),
			FastInter: time.Duration(c.FastInter), Rise: c.Rise, Fall: c.Fall, MarkDown: c.OnError == "mark-down"},
	}
}
