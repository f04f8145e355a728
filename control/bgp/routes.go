package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/netif"
)

// Routes are a node's announcements as the daemon drives them: the
// announcer and its speaker, an operator's drain, and a shutdown's
// withdrawal.
type Routes struct {
	a     *Announcer
	event func(api.Event)
	log   *slog.Logger
	drain time.Duration
}

// Dataplane is the data plane as a node behind ECMP releases it.
type Dataplane interface {
	Close() error
	Detach() error
}

// Start starts the speaker of cfg on iface (the router ID and the IPv6
// next hop default to its addresses) and announces what src can serve.
func Start(ctx context.Context, cfg Config, iface string, src Source, event func(api.Event), log *slog.Logger) (*Routes, error) {
	if !cfg.RouterID.IsValid() {
		a := netif.Addr4(iface)
		if !a.IsValid() {
			return nil, fmt.Errorf("--bgp-router-id: required (%s has no IPv4 address to take it from)", iface)
		}
		cfg.RouterID = a
	}
	if cfg.NoNextHop6() {
		cfg.NextHop6 = netif.Addr6(iface) // none: IPv6 routes withheld
	}
	cfg.Iface = iface
	sp, err := NewSpeaker(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	return &Routes{a: NewAnnouncer(sp, src), event: event, log: log, drain: cfg.Drain}, nil
}

// Run applies the rules until ctx ends.
func (r *Routes) Run(ctx context.Context) { r.a.Run(ctx) }

// Kick asks for the rules to be applied again soon.
func (r *Routes) Kick() { r.a.Kick() }

// LastDecision is when the announcer last ran its rules.
func (r *Routes) LastDecision() time.Time { return r.a.LastDecision() }

// Status is `sluice bgp status`.
func (r *Routes) Status(ctx context.Context) (api.BGPStatus, error) { return r.a.Status(ctx) }

// Collectors are BGP's metrics.
func (r *Routes) Collectors() []prometheus.Collector { return []prometheus.Collector{r.a} }

// Drain is `sluice node drain`; the data plane keeps forwarding.
func (r *Routes) Drain(ctx context.Context) (api.BGPStatus, error) {
	if err := r.a.Drain(ctx, true); err != nil {
		return api.BGPStatus{}, err
	}
	r.event(api.Event{Kind: "config", Reason: "bgp: node drained: every route withdrawn"})
	return r.a.Status(ctx)
}

// Undrain is `sluice node undrain`.
func (r *Routes) Undrain(ctx context.Context) (api.BGPStatus, error) {
	r.a.Undrain()
	r.event(api.Event{Kind: "config", Reason: "bgp: node undrained: routes announced by the rules again"})
	return r.a.Status(ctx)
}

// withdrawTimeout bounds the withdrawals' sending on shutdown.
const withdrawTimeout = 3 * time.Second

// WithdrawBound is the longest Withdraw takes: the withdrawals, then
// the drain period.
func (r *Routes) WithdrawBound() time.Duration { return WithdrawBound(r.drain) }

// WithdrawBound is the longest a shutdown's withdrawal takes with a
// drain period of drain.
func WithdrawBound(drain time.Duration) time.Duration { return withdrawTimeout + drain }

// Withdraw withdraws every route on shutdown, waits until the routers
// were sent the withdrawals, keeps forwarding for the drain period
// (packets already on their way), and closes the sessions.
func (r *Routes) Withdraw() {
	ctx, cancel := context.WithTimeout(context.Background(), withdrawTimeout)
	defer cancel()
	start := time.Now()
	if err := r.a.Drain(ctx, false); err != nil {
		r.log.Warn("bgp: withdraw on shutdown", "err", err)
	}
	r.log.Info("bgp: routes withdrawn; forwarding for the drain period", "withdrawn_in", time.Since(start), "drain", r.drain)
	time.Sleep(r.drain)
	r.a.Speaker.Stop()
}

// Release detaches the data plane: behind ECMP the routers no longer
// send here, so nothing need forward across a restart, and a stale
// program must not stay.
func (r *Routes) Release(dp Dataplane) error { return dp.Detach() }
