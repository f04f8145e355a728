package bgp

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Reasons an address is withheld, worst first: the label values of
// sluice_bgp_withheld.
const (
	ReasonDraining      = "draining"
	ReasonInterfaceDown = "interface-down"
	ReasonNotAttached   = "not-attached"
	ReasonNotSynced     = "not-synced"
	ReasonCopyingFlows  = "copying-flows"
	ReasonUndecided     = "checks-undecided"
	ReasonLearning      = "learning"
	ReasonNoBackends    = "no-usable-backends"
	// ReasonNoNextHop6 withholds IPv6 addresses only: a session runs
	// over IPv4 and there is no IPv6 next hop to give its routes.
	ReasonNoNextHop6 = "no-ipv6-next-hop"
)

// Reasons lists every reason, for metrics that export zeros.
var Reasons = []string{ReasonDraining, ReasonInterfaceDown, ReasonNotAttached, ReasonNotSynced, ReasonCopyingFlows, ReasonUndecided, ReasonLearning, ReasonNoBackends, ReasonNoNextHop6}

// NodeView is what holds for every service of this node.
type NodeView struct {
	Draining bool // sluice node drain, or a shutdown under way
	Fault    bool // the interface is down or has no carrier
	Attached bool // the XDP program is attached
	Synced   bool // the store's revision is applied here
	// CopyingFlows: with flow sync, the other nodes' connection tables
	// are not all copied here yet.
	CopyingFlows bool
	// Undecided: since the daemon started, not every health check has
	// reached its first verdict (and their bound has not passed).
	Undecided bool
	Learning  bool // the learn delay has not passed yet
	// NoNextHop6: IPv6 routes would carry no valid next hop (see
	// Config.NoNextHop6).
	NoNextHop6 bool
}

// reason is the first node-wide reason not to announce, or "".
func (n NodeView) reason() string {
	switch {
	case n.Draining:
		return ReasonDraining
	case n.Fault:
		return ReasonInterfaceDown
	case !n.Attached:
		return ReasonNotAttached
	case !n.Synced:
		return ReasonNotSynced
	case n.CopyingFlows:
		return ReasonCopyingFlows
	case n.Undecided:
		return ReasonUndecided
	case n.Learning:
		return ReasonLearning
	}
	return ""
}

// Service is one VIP (ADDR:PORT/PROTO) and its usable backends.
type Service struct {
	VIP       string
	Addr      netip.Addr
	Usable    int
	MinActive int
}

// ServiceState is a service's verdict, as bgp status shows it.
type ServiceState struct {
	VIP         string `json:"vip"`
	Serviceable bool   `json:"serviceable"`
	Reason      string `json:"reason,omitempty"`
	Usable      int    `json:"usable"`
	MinActive   int    `json:"min_active"`
}

// Decision is what to announce: an address is announced while at least
// one of its services is serviceable.
type Decision struct {
	Announce []netip.Prefix
	Withheld map[netip.Prefix]string
	Services []ServiceState
}

// Route is the host route of an address: /32 or /128.
func Route(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

// Decide applies the announce rules to this node's view.
func Decide(n NodeView, services []Service) Decision {
	d := Decision{Withheld: map[netip.Prefix]string{}}
	nodeWhy := n.reason()
	ok := map[netip.Prefix]bool{}
	for _, s := range services {
		min := max(s.MinActive, 1)
		st := ServiceState{VIP: s.VIP, Usable: s.Usable, MinActive: min, Serviceable: nodeWhy == "" && s.Usable >= min}
		switch {
		case nodeWhy != "":
			st.Reason = nodeWhy
		case !st.Serviceable:
			st.Reason = fmt.Sprintf("%s: %d usable, min_active %d", ReasonNoBackends, s.Usable, min)
		}
		d.Services = append(d.Services, st)
		r := Route(s.Addr)
		ok[r] = ok[r] || st.Serviceable
	}
	for r, good := range ok {
		switch {
		case good && n.NoNextHop6 && r.Addr().Is6():
			d.Withheld[r] = ReasonNoNextHop6
		case good:
			d.Announce = append(d.Announce, r)
		case nodeWhy != "":
			d.Withheld[r] = nodeWhy
		default:
			d.Withheld[r] = ReasonNoBackends
		}
	}
	slices.SortFunc(d.Announce, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	slices.SortFunc(d.Services, func(a, b ServiceState) int { return cmp.Compare(a.VIP, b.VIP) })
	return d
}
