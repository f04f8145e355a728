package bgp

import (
	"context"
	"sync"
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
	// tagged: a drain tags every route GRACEFUL_SHUTDOWN until it
	// withdraws them; every update keeps the tag meanwhile.
	tagged  atomic.Bool
	kick    chan struct{}
	last    atomic.Pointer[Decision]
	decided atomic.Int64 // when update last finished (unix ns)
	// mu makes a decision and the routes it sets one step: an update
	// that decided before a drain cannot set its routes after the
	// drain's withdrawal.
	mu sync.Mutex
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
	a.mu.Lock()
	defer a.mu.Unlock()
	v := a.src.NodeView()
	v.Draining, v.Learning = a.draining.Load(), time.Since(a.start) < a.learn
	v.NoNextHop6 = a.Speaker.cfg.NoNextHop6()
	d := Decide(v, a.src.Services())
	a.last.Store(&d)
	if err := a.Speaker.Set(d.Announce, a.tagged.Load()); err != nil {
		a.Speaker.log.Error("bgp: set routes", "err", err)
	}
	a.decided.Store(time.Now().UnixNano())
}

// LastDecision is when the rules last ran and their routes were set
// (zero before the first time): at least every 200 ms while it runs.
func (a *Announcer) LastDecision() time.Time {
	if n := a.decided.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Draining reports whether the node is drained.
func (a *Announcer) Draining() bool { return a.draining.Load() }

// Drain withdraws every route, first tagging them GRACEFUL_SHUTDOWN for
// the drain period when so configured (the periodic updates keep the
// tag), and waits until the routers were sent the withdrawals (or ctx
// ends: an interrupted tagging is undone).
func (a *Announcer) Drain(ctx context.Context, tagFirst bool) error {
	if tagFirst && a.Speaker.cfg.GracefulShutdown && !a.draining.Load() {
		a.tagged.Store(true)
		a.update()
		select {
		case <-time.After(a.Speaker.cfg.Drain):
		case <-ctx.Done():
			a.tagged.Store(false)
			a.update()
			return ctx.Err()
		}
	}
	a.draining.Store(true)
	a.update()
	a.tagged.Store(false) // withdrawn: nothing is announced to tag
	return a.Speaker.Sent(ctx)
}

// Undrain announces again what the rules allow, untagged.
func (a *Announcer) Undrain() {
	a.draining.Store(false)
	a.tagged.Store(false)
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
