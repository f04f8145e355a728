package bgp

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

// Source is what the announcer reads off the daemon: the node's state
// (Draining and Learning are the announcer's own) and its services.
type Source interface {
	NodeView() NodeView
	Services() []Service
}

// Announcer keeps the speaker's routes equal to what Decide says for
// the source, on every Kick and at least every 200 ms.
type Announcer struct {
	Speaker  *Speaker
	src      Source
	learn    time.Duration
	start    time.Time
	draining atomic.Bool
	kick     chan struct{}
	last     atomic.Pointer[Decision]
}

// NewAnnouncer announces what src can serve through sp.
func NewAnnouncer(sp *Speaker, src Source) *Announcer {
	return &Announcer{Speaker: sp, src: src, learn: sp.cfg.Learn, start: time.Now(), kick: make(chan struct{}, 1)}
}

// Kick asks for the rules to be applied again soon.
func (a *Announcer) Kick() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run applies the rules until ctx ends.
func (a *Announcer) Run(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		a.update()
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
		}
	}
}

func (a *Announcer) update() {
	v := a.src.NodeView()
	v.Draining, v.Learning = a.draining.Load(), time.Since(a.start) < a.learn
	v.NoNextHop6 = a.Speaker.cfg.NoNextHop6()
	d := Decide(v, a.src.Services())
	a.last.Store(&d)
	if err := a.Speaker.Set(d.Announce, false); err != nil {
		a.Speaker.log.Error("bgp: set routes", "err", err)
	}
}

// Draining reports whether the node is drained.
func (a *Announcer) Draining() bool { return a.draining.Load() }

// Drain withdraws every route, first tagging them GRACEFUL_SHUTDOWN for
// the drain period when so configured, and waits until the routers were
// sent the withdrawals (or ctx ends).
func (a *Announcer) Drain(ctx context.Context, tagFirst bool) error {
	if tagFirst && a.Speaker.cfg.GracefulShutdown && !a.draining.Load() {
		if err := a.Speaker.Set(a.Speaker.Announced(), true); err != nil {
			return err
		}
		select {
		case <-time.After(a.Speaker.cfg.Drain):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.draining.Store(true)
	a.update()
	return a.Speaker.Sent(ctx)
}

// Undrain announces again what the rules allow.
func (a *Announcer) Undrain() {
	a.draining.Store(false)
	a.update()
}

// Status is `sluice bgp status`.
func (a *Announcer) Status(ctx context.Context) (api.BGPStatus, error) {
	ps, err := a.Speaker.Peers(ctx)
	if err != nil {
		return api.BGPStatus{}, err
	}
	cfg := a.Speaker.cfg
	out := api.BGPStatus{Enabled: true, ASN: cfg.ASN, RouterID: cfg.RouterID.String(), Draining: a.draining.Load(),
		Peers: []api.BGPPeer{}, Announced: []string{}, Withheld: map[string]string{}}
	for _, p := range ps {
		out.Peers = append(out.Peers, api.BGPPeer{Addr: p.Addr, ASN: p.ASN, State: p.State, Uptime: p.Uptime, BFD: p.BFD})
	}
	for _, r := range a.Speaker.Announced() {
		out.Announced = append(out.Announced, r.String())
	}
	if d := a.last.Load(); d != nil {
		for r, why := range d.Withheld {
			out.Withheld[r.String()] = why
		}
		for _, s := range d.Services {
			out.Services = append(out.Services, api.BGPService{VIP: s.VIP, Serviceable: s.Serviceable, Reason: s.Reason, Usable: s.Usable, MinActive: s.MinActive})
		}
	}
	return out, nil
}
