// Package state is sluice's desired state: the model an operator edits
// (VIPs, backends, checks), validated in one place, and its durable home —
// the bbolt store with revisions, the archive of previous states, checksummed
// snapshots and the availability timeline.
package state

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
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

// UnmarshalText implements encoding.TextUnmarshaler; "" is unset (0,
// which Normalize fills with the field's default).
func (d *Duration) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*d = 0
		return nil
	}
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
	// GUEPort is forward gue's UDP destination (default DefaultGUEPort).
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
	// MinAgentInterval and MinLoadInterval bound how often an agent is
	// asked and a load page read: a faster one would only feed the
	// reweight bound answers it throws away. Left unset, they default to
	// the health check's interval, raised to these.
	MinAgentInterval = 100 * time.Millisecond
	MinLoadInterval  = 100 * time.Millisecond
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

// Normalize fills defaults and canonicalises names, so equal intents
// compare equal. It does not validate.
func (s *State) Normalize() {
	for i := range s.VIPs {
		s.VIPs[i].normalize()
	}
	slices.SortFunc(s.VIPs, func(a, b VIP) int { return strings.Compare(a.VIP, b.VIP) })
}

// normalize fills a VIP's defaults and its backends'.
func (v *VIP) normalize() {
	if k, err := ParseVIPKey(v.VIP); err == nil {
		v.VIP = FormatVIPKey(k)
	}
	v.Forward = strings.ToLower(v.Forward)
	if v.Forward == "" {
		v.Forward = ForwardIPIP
	}
	if v.Forward == ForwardGUE && v.GUEPort == 0 {
		v.GUEPort = DefaultGUEPort
	}
	if v.RingSize == 0 {
		v.RingSize = DefaultRingSize
	}
	if v.MinActive == 0 {
		v.MinActive = DefaultMinActive
	}
	if v.UDPTimeout == 0 {
		v.UDPTimeout = Duration(DefaultUDPTimeout)
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
		v.Backends[j].normalize(v.CheckVia)
	}
	slices.SortFunc(v.Backends, func(a, b Backend) int { return strings.Compare(a.Addr, b.Addr) })
}

// normalize fills a backend's defaults; vipVia is its VIP's check_via.
func (b *Backend) normalize(vipVia string) {
	if a, err := netip.ParseAddr(b.Addr); err == nil {
		b.Addr = a.String()
	}
	if m, err := net.ParseMAC(b.MAC); err == nil {
		b.MAC = m.String()
	}
	c := &b.Check
	c.normalize(vipVia)
	if b.Agent != nil && b.Agent.Interval == 0 {
		b.Agent.Interval = max(c.Interval, Duration(MinAgentInterval))
	}
	if b.Load != nil && b.Load.Interval == 0 {
		b.Load.Interval = max(c.Interval, Duration(MinLoadInterval))
	}
	if b.Load != nil && b.Load.Target == 0 {
		b.Load.Target = DefaultLoadTarget
	}
}

// normalize fills a check's defaults; vipVia is its VIP's check_via.
func (c *Check) normalize(vipVia string) {
	c.Type = strings.ToLower(c.Type)
	if c.Type == "" {
		c.Type = string(CheckTCP)
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
		c.Interval = Duration(DefaultInterval)
	}
	if c.Timeout == 0 {
		c.Timeout = Duration(DefaultTimeout)
	}
	if c.Rise == 0 {
		c.Rise = DefaultRise
	}
	if c.Fall == 0 {
		c.Fall = DefaultFall
	}
}

// Clone deep-copies a state.
func (s State) Clone() State {
	b, _ := json.Marshal(s)
	var out State
	_ = json.Unmarshal(b, &out)
	return out
}

// FindVIP returns the index of the VIP with key k, or -1.
func (s *State) FindVIP(k VIPKey) int {
	for i, v := range s.VIPs {
		if vk, err := ParseVIPKey(v.VIP); err == nil && vk == k {
			return i
		}
	}
	return -1
}

// LookupVIP returns the index of the VIP with key k, or an ErrNotFound
// that names it.
func (s *State) LookupVIP(k VIPKey) (int, error) {
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
