package loader

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/layout"
)

// Limits of the data plane, from sluice.h.
const (
	MaxVIPs     = 1024
	MaxBackends = layout.MaxBackends // index 0 is reserved
	MaxRingSize = 655373
	// DefaultFlowTableSize is the connection table size when Options leave it 0.
	DefaultFlowTableSize = 1 << 20
	// DefaultUDPTimeout is the idle time after which a UDP flow is re-hashed.
	DefaultUDPTimeout = 30 * time.Second
)

// Proto is an L4 protocol a VIP listens on.
type Proto uint8

// Protocols a VIP can match.
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

// Forward is how packets reach a backend.
type Forward uint8

// Forwarding modes.
const (
	ForwardIPIP = Forward(bpf.LbSluiceForwardSLUICE_FWD_IPIP)
	ForwardDSR  = Forward(bpf.LbSluiceForwardSLUICE_FWD_DSR)
	ForwardGUE  = Forward(bpf.LbSluiceForwardSLUICE_FWD_GUE)
)

// DefaultGUEPort is the UDP port GUE is sent to when a VIP names none.
const DefaultGUEPort = 6080

func (f Forward) String() string {
	switch f {
	case ForwardIPIP:
		return "ipip"
	case ForwardDSR:
		return "dsr"
	case ForwardGUE:
		return "gue"
	}
	return fmt.Sprintf("forward(%d)", uint8(f))
}

// Encapsulates reports whether f wraps packets in an outer IP header.
func (f Forward) Encapsulates() bool { return f == ForwardIPIP || f == ForwardGUE }

// ParseForward parses "ipip", "gue" or "dsr".
func ParseForward(s string) (Forward, error) {
	switch strings.ToLower(s) {
	case "ipip":
		return ForwardIPIP, nil
	case "dsr":
		return ForwardDSR, nil
	case "gue":
		return ForwardGUE, nil
	}
	return 0, fmt.Errorf("forward mode %q: want ipip, gue or dsr", s)
}

// VIPKey names a virtual service. Port 0 matches every port.
type VIPKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (k VIPKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// VIP is what the data plane knows of a virtual service. The ring fields
// are owned by ReplaceRing.
type VIP struct {
	ID         uint32 // 0 .. MaxVIPs-1, chosen by the control plane
	Forward    Forward
	GUEPort    uint16 // forward gue: the UDP destination port (0: DefaultGUEPort)
	UDPTimeout time.Duration
	RingSlot   uint32 // read-only: the active ring's slot
	RingSize   uint32 // read-only: the active ring's size
}

// BackendFlags are the data-plane flags of a backend.
type BackendFlags uint8

// Backend flags.
const (
	BackendUsable   = BackendFlags(bpf.LbSluiceBackendFlagsSLUICE_BACKEND_USABLE)
	BackendDraining = BackendFlags(bpf.LbSluiceBackendFlagsSLUICE_BACKEND_DRAINING)
)

// Backend is one entry of the backend table.
type Backend struct {
	Addr  netip.Addr
	VIPID uint32
	Flags BackendFlags
	MAC   net.HardwareAddr // next hop
}

// Config is the data plane's global configuration.
type Config struct {
	Seed uint32
	MAC  net.HardwareAddr // our interface's MAC
	// EncapSrc4 is the /16 prefix of IPIP outer sources; the low 16 bits
	// carry per-flow entropy.
	EncapSrc4 netip.Addr
	// EncapSrc6 is the /96 prefix of IPv6 outer sources; the low 32 bits
	// carry per-flow entropy.
	EncapSrc6 netip.Addr
	// NewFlowLimit caps new connection-table entries per CPU per second;
	// flows beyond it are steered by the ring alone. 0 means
	// DefaultNewFlowLimit; NoNewFlowLimit disables the guard.
	NewFlowLimit uint32
	// FlowSync reports every connection-table write through FlowEvents.
	FlowSync bool
	// VIPOpen passes packets for a VIP address on ports and protocols no
	// VIP serves to this host's stack; by default they are dropped
	// (drop_vip_closed), so that the host's own services never answer
	// on a VIP.
	VIPOpen bool
	// NoEcho drops ICMP echo to VIP addresses too; by default the host
	// answers it.
	NoEcho bool
}

// New-flow guard settings.
const (
	DefaultNewFlowLimit = 125000
	NoNewFlowLimit      = ^uint32(0)
)

// Default outer source prefixes (documented in docs/datapath.md).
var (
	DefaultEncapSrc4 = layout.DefaultEncapSrc4
	DefaultEncapSrc6 = layout.DefaultEncapSrc6
)

// Counter is a packet and byte count summed over CPUs.
type Counter = layout.Counter

// Stat names a global outcome or event counter.
type Stat uint32

// Global counters, in sluice.h order.
const (
	StatPassNonIP       = Stat(bpf.LbSluiceStatSLUICE_STAT_PASS_NON_IP)
	StatPassNonVIP      = Stat(bpf.LbSluiceStatSLUICE_STAT_PASS_NON_VIP)
	StatPassUnsupported = Stat(bpf.LbSluiceStatSLUICE_STAT_PASS_UNSUPPORTED)
	StatMalformed       = Stat(bpf.LbSluiceStatSLUICE_STAT_MALFORMED)
	StatTxIPIP          = Stat(bpf.LbSluiceStatSLUICE_STAT_TX_IPIP)
	StatTxDSR           = Stat(bpf.LbSluiceStatSLUICE_STAT_TX_DSR)
	StatDropNoBackend   = Stat(bpf.LbSluiceStatSLUICE_STAT_DROP_NO_BACKEND)
	StatDropFragment    = Stat(bpf.LbSluiceStatSLUICE_STAT_DROP_FRAGMENT)
	StatDropUnsupported = Stat(bpf.LbSluiceStatSLUICE_STAT_DROP_UNSUPPORTED)
	StatDropEncap       = Stat(bpf.LbSluiceStatSLUICE_STAT_DROP_ENCAP)
	StatCTHit           = Stat(bpf.LbSluiceStatSLUICE_STAT_CT_HIT)
	StatCTMiss          = Stat(bpf.LbSluiceStatSLUICE_STAT_CT_MISS)
	StatCTResteer       = Stat(bpf.LbSluiceStatSLUICE_STAT_CT_RESTEER)
	StatICMPTooBig      = Stat(bpf.LbSluiceStatSLUICE_STAT_ICMP_TOO_BIG)
	StatCTFloodSkip     = Stat(bpf.LbSluiceStatSLUICE_STAT_CT_FLOOD_SKIP)
	StatSyncLost        = Stat(bpf.LbSluiceStatSLUICE_STAT_SYNC_LOST)
	StatPassOtherHost   = Stat(bpf.LbSluiceStatSLUICE_STAT_PASS_OTHER_HOST)
	StatDropVIPClosed   = Stat(bpf.LbSluiceStatSLUICE_STAT_DROP_VIP_CLOSED)
	StatTxGUE           = Stat(bpf.LbSluiceStatSLUICE_STAT_TX_GUE)
	StatCaptureLost     = Stat(bpf.LbSluiceStatSLUICE_STAT_CAPTURE_LOST)
	StatCaptureLimited  = Stat(bpf.LbSluiceStatSLUICE_STAT_CAPTURE_LIMITED)
	StatProbeTx         = Stat(bpf.LbSluiceStatSLUICE_STAT_PROBE_TX)
	StatProbeDrop       = Stat(bpf.LbSluiceStatSLUICE_STAT_PROBE_DROP)
	numStats            = int(bpf.LbSluiceStatSLUICE_STAT_MAX)
)

var statNames = [...]string{
	StatPassNonIP:       "pass_non_ip",
	StatPassNonVIP:      "pass_non_vip",
	StatPassUnsupported: "pass_unsupported",
	StatMalformed:       "malformed",
	StatTxIPIP:          "tx_ipip",
	StatTxDSR:           "tx_dsr",
	StatDropNoBackend:   "drop_no_backend",
	StatDropFragment:    "drop_fragment",
	StatDropUnsupported: "drop_unsupported",
	StatDropEncap:       "drop_encap",
	StatCTHit:           "ct_hit",
	StatCTMiss:          "ct_miss",
	StatCTResteer:       "ct_resteer",
	StatICMPTooBig:      "icmp_too_big",
	StatCTFloodSkip:     "ct_flood_skip",
	StatSyncLost:        "sync_lost",
	StatPassOtherHost:   "pass_other_host",
	StatDropVIPClosed:   "drop_vip_closed",
	StatTxGUE:           "tx_gue",
	StatCaptureLost:     "capture_lost",
	StatCaptureLimited:  "capture_limited",
	StatProbeTx:         "probe_tx",
	StatProbeDrop:       "probe_drop",
}

func (s Stat) String() string {
	if int(s) < len(statNames) {
		return statNames[s]
	}
	return fmt.Sprintf("stat(%d)", uint32(s))
}

// IsOutcome reports whether s is a per-packet outcome (each packet lands in
// exactly one) rather than an event counted on top.
func (s Stat) IsOutcome() bool {
	return s <= StatDropEncap || s == StatPassOtherHost || s == StatDropVIPClosed || s == StatTxGUE
}

// AllStats lists every global counter.
func AllStats() []Stat {
	out := make([]Stat, numStats)
	for i := range out {
		out[i] = Stat(i)
	}
	return out
}

// Flow is one connection-table entry.
type Flow struct {
	Src, Dst     netip.AddrPort
	Proto        Proto
	Backend      uint32
	LastSeenNano uint64 // coarse monotonic clock
}

func (k VIPKey) raw() bpf.LbVipKey {
	return bpf.LbVipKey{Addr: layout.Words(k.Addr), Port: layout.Htons(k.Port), Proto: uint8(k.Proto), Family: layout.Family(k.Addr)}
}

func vipKeyFromRaw(r bpf.LbVipKey) VIPKey {
	return VIPKey{Addr: layout.Addr(r.Addr, r.Family), Port: layout.Ntohs(r.Port), Proto: Proto(r.Proto)}
}

// Validate checks a VIP key for the data plane.
func (k VIPKey) Validate() error {
	if !k.Addr.IsValid() {
		return fmt.Errorf("vip address: missing")
	}
	if k.Addr.Is4In6() {
		return fmt.Errorf("vip address %s: write IPv4 addresses as IPv4", k.Addr)
	}
	if k.Addr.Zone() != "" {
		return fmt.Errorf("vip address %s: zones are not supported", k.Addr)
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("vip protocol %d: want tcp or udp", k.Proto)
	}
	return nil
}
