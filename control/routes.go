package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/bgp"
	"github.com/sluicelb/sluice/control/events"
	"github.com/sluicelb/sluice/control/state"
)

// routes announce the VIPs this node can serve to its routers (route
// health injection over BGP), or nothing.
type routes interface {
	Run(ctx context.Context)
	Kick()
	// LastDecision is when the announcer last ran its rules (at least
	// every 200 ms); zero when nothing is announced.
	LastDecision() time.Time
	Status(ctx context.Context) (api.BGPStatus, error)
	Drain(ctx context.Context) (api.BGPStatus, error)
	Undrain(ctx context.Context) (api.BGPStatus, error)
	Collectors() []prometheus.Collector
	// Withdraw takes every route back and ends the sessions on shutdown,
	// within WithdrawBound.
	Withdraw()
	WithdrawBound() time.Duration
	// Release lets the data plane go as the node's place requires: one
	// behind ECMP is detached (the routers no longer send here, and a
	// stale program must not stay); one alone or in a pair keeps
	// forwarding across a restart (it stays pinned).
	Release(dp bgp.Dataplane) error
}

var errNoBGP = errors.New("this daemon does not announce over BGP (start it with --bgp-asn and --bgp-peer)")

// noRoutes is a node that announces nothing.
type noRoutes struct{}

func (noRoutes) Run(context.Context) {}
func (noRoutes) Kick()               {}
func (noRoutes) LastDecision() time.Time {
	return time.Time{}
}
func (noRoutes) Status(context.Context) (api.BGPStatus, error) {
	return api.BGPStatus{Peers: []api.BGPPeer{}, Announced: []string{}, Withheld: map[string]string{}}, nil
}
func (noRoutes) Drain(context.Context) (api.BGPStatus, error) {
	return api.BGPStatus{}, fmt.Errorf("node drain: %w", errNoBGP)
}
func (noRoutes) Undrain(context.Context) (api.BGPStatus, error) {
	return api.BGPStatus{}, fmt.Errorf("node undrain: %w", errNoBGP)
}
func (noRoutes) Collectors() []prometheus.Collector { return nil }
func (noRoutes) Withdraw()                          {}
func (noRoutes) WithdrawBound() time.Duration       { return 0 }
func (noRoutes) Release(dp bgp.Dataplane) error     { return dp.Close() }

// newRoutes starts the BGP speaker of cfg (nil: no routes) for src.
func newRoutes(ctx context.Context, cfg *bgp.Config, iface string, src bgp.Source, ev *events.Log, log *slog.Logger) (routes, error) {
	if cfg == nil {
		return noRoutes{}, nil
	}
	r, err := bgp.Start(ctx, *cfg, iface, src, ev.Add, log)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return r, nil
}

// NodeView is the node as its announcer sees it (bgp.Source): the
// interface and XDP attachment as the kernel has them, whether the
// topology's newest state is applied here, its peers' flows copied and
// its checks' first verdicts reached.
func (c *core) NodeView() bgp.NodeView {
	v := bgp.NodeView{}
	if l, err := netlink.LinkByIndex(c.dp.Iface().Index); err == nil {
		at := l.Attrs()
		v.Fault = at.RawFlags&unix.IFF_UP == 0 || at.RawFlags&unix.IFF_LOWER_UP == 0
	}
	v.Attached = c.dp.Attached() // ours, not just any XDP program
	v.Synced = c.topo.Synced(c.have.Load())
	v.CopyingFlows = c.topo.CopyingFlows()
	v.Undecided = !c.checks.allDecided(time.Now())
	return v
}

// Services are the VIPs with their usable backends as last applied to
// the maps (bgp.Source).
func (c *core) Services() []bgp.Service {
	var out []bgp.Service
	for _, v := range c.State().VIPs {
		k, err := state.ParseVIPKey(v.VIP)
		if err != nil {
			continue
		}
		svc := bgp.Service{VIP: v.VIP, Addr: k.Addr, MinActive: v.MinActive}
		views, _, _ := c.rec.View(k)
		for _, bv := range views {
			if bv.Usable {
				svc.Usable++
			}
		}
		out = append(out, svc)
	}
	return out
}
