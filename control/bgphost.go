package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/bgp"
	"github.com/sluicelb/sluice/control/netif"
	"github.com/sluicelb/sluice/control/state"
)

// bgpSource is the daemon as its BGP announcer sees it (bgp.Source).
type bgpSource struct{ d *Daemon }

func newAnnouncer(ctx context.Context, d *Daemon, cfg bgp.Config) (*bgp.Announcer, error) {
	if !cfg.RouterID.IsValid() {
		a := netif.Addr4(d.opts.Iface)
		if !a.IsValid() {
			return nil, fmt.Errorf("--bgp-router-id: required (%s has no IPv4 address to take it from)", d.opts.Iface)
		}
		cfg.RouterID = a
	}
	if cfg.NoNextHop6() {
		cfg.NextHop6 = netif.Addr6(d.opts.Iface) // none: IPv6 routes withheld
	}
	cfg.Iface = d.opts.Iface
	sp, err := bgp.NewSpeaker(ctx, cfg, d.log)
	if err != nil {
		return nil, err
	}
	return bgp.NewAnnouncer(sp, bgpSource{d}), nil
}

// NodeView: the interface's state and XDP attachment as the kernel has
// them, and (in a cluster) whether the store's newest state is applied.
func (s bgpSource) NodeView() bgp.NodeView {
	v := bgp.NodeView{Synced: true}
	if l, err := netlink.LinkByIndex(s.d.dp.Iface().Index); err == nil {
		at := l.Attrs()
		v.Fault = at.RawFlags&unix.IFF_UP == 0 || at.RawFlags&unix.IFF_LOWER_UP == 0
		v.Attached = at.Xdp != nil && at.Xdp.Attached
	}
	if s.d.cl != nil {
		s.d.mu.Lock()
		applied := s.d.etcdRev
		s.d.mu.Unlock()
		v.Synced = s.d.cl.Synced(applied)
	}
	v.CopyingFlows = s.d.flows != nil && !s.d.flows.Copied()
	return v
}

// Services are the VIPs with their usable backends as last applied to
// the maps.
func (s bgpSource) Services() []bgp.Service {
	var out []bgp.Service
	var keys []state.VIPKey
	s.d.mu.Lock()
	for _, v := range s.d.state.VIPs {
		if k, err := state.ParseVIPKey(v.VIP); err == nil {
			out = append(out, bgp.Service{VIP: v.VIP, Addr: k.Addr, MinActive: v.MinActive})
			keys = append(keys, k)
		}
	}
	s.d.mu.Unlock()
	for i, k := range keys {
		views, _, _ := s.d.rec.View(k)
		for _, bv := range views {
			if bv.Usable {
				out[i].Usable++
			}
		}
	}
	return out
}

// drainForShutdown withdraws every route, waits until the routers were
// sent the withdrawals, keeps forwarding for the drain period (packets
// already on their way), and closes the sessions.
func (d *Daemon) drainForShutdown(drain time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if err := d.bgp.Drain(ctx, false); err != nil {
		d.log.Warn("bgp: withdraw on shutdown", "err", err)
	}
	d.log.Info("bgp: routes withdrawn; forwarding for the drain period", "withdrawn_in", time.Since(start), "drain", drain)
	time.Sleep(drain)
	d.bgp.Speaker.Stop()
}

var errNoBGP = errors.New("this daemon does not announce over BGP (start it with --bgp-asn and --bgp-peer)")

// BGPStatus is `sluice bgp status`.
func (d *Daemon) BGPStatus(ctx context.Context) (api.BGPStatus, error) {
	if d.bgp == nil {
		return api.BGPStatus{Peers: []api.BGPPeer{}, Announced: []string{}, Withheld: map[string]string{}}, nil
	}
	return d.bgp.Status(ctx)
}

// Drain is `sluice node drain`; the data plane keeps forwarding.
func (d *Daemon) Drain(ctx context.Context) (api.BGPStatus, error) {
	if d.bgp == nil {
		return api.BGPStatus{}, fmt.Errorf("node drain: %w", errNoBGP)
	}
	if err := d.bgp.Drain(ctx, true); err != nil {
		return api.BGPStatus{}, err
	}
	d.events.Add(api.Event{Kind: "config", Reason: "bgp: node drained: every route withdrawn"})
	return d.bgp.Status(ctx)
}

// Undrain is `sluice node undrain`.
func (d *Daemon) Undrain(ctx context.Context) (api.BGPStatus, error) {
	if d.bgp == nil {
		return api.BGPStatus{}, fmt.Errorf("node undrain: %w", errNoBGP)
	}
	d.bgp.Undrain()
	d.events.Add(api.Event{Kind: "config", Reason: "bgp: node undrained: routes announced by the rules again"})
	return d.bgp.Status(ctx)
}
