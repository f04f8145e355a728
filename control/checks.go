package control

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/control/probevia"
	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader/tcprobe"
)

// checks keeps the health checks and the weight pollers equal to the
// committed state's, and knows which backends each check speaks for.
type checks struct {
	hm      *health.Manager
	weights *weight.Engine
	rec     *reconcile.Reconciler
	log     *slog.Logger
	iface   *net.Interface
	probe   *ebpf.Program // tc_probe, attached for the first check via a VIP
	// seen is called once for every backend of a new state (its
	// failure counter is exported at 0).
	seen func(vip, backend string)

	refs  atomic.Pointer[map[health.ID][]reconcile.BackendRef]
	bound atomic.Int64 // how long may pass without a probe finishing
	// decideBound is the longest a check of the state takes to reach its
	// first verdict; decided is latched once every check reached one
	// since the daemon started (or that bound passed).
	decideBound atomic.Int64
	decided     atomic.Bool
	started     time.Time

	mu     sync.Mutex
	via    *probevia.Dialer // probes through the data plane; nil until a check goes via a VIP
	probes io.Closer        // tc_probe's attachments, with via
}

// of are the backends check id speaks for.
func (c *checks) of(id health.ID) []reconcile.BackendRef {
	if p := c.refs.Load(); p != nil {
		return (*p)[id]
	}
	return nil
}

// sync makes the running checks and pollers those of s. A new check
// starts from the adopted data plane's usable flag where it has one (a
// restarted daemon notices nothing), else down.
func (c *checks) sync(ctx context.Context, s state.State) {
	var list []health.Check
	initial := map[health.ID]health.State{}
	// The backend table is read once, and only when a check is new: its
	// initial state is all the table gives (a read takes milliseconds).
	var adopted func(state.VIPKey, netip.Addr) (health.State, bool)
	refs := map[health.ID][]reconcile.BackendRef{}
	var known map[health.ID][]reconcile.BackendRef // the checks already running
	if p := c.refs.Load(); p != nil {
		known = *p
	}
	var bound, decide time.Duration
	for _, v := range s.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		for _, b := range v.Backends {
			hc := health.For(k, b)
			if hc.Probe.Via.IsValid() {
				hc.Probe.Dial = c.dialer().Dial(hc.Probe.Via)
			}
			if hc.Probe.Type != health.None {
				bound = max(bound, 3*hc.Settings.Interval+hc.Settings.Timeout)
				decide = max(decide, firstVerdictBound(hc.Settings))
			}
			list = append(list, hc)
			refs[hc.ID()] = append(refs[hc.ID()], reconcile.BackendRef{VIP: k, Addr: netip.MustParseAddr(b.Addr)})
			c.seen(v.VIP, b.Addr)
			if _, ok := known[hc.ID()]; ok {
				continue
			}
			if adopted == nil {
				adopted = c.rec.AdoptedHealth()
			}
			if st, ok := adopted(k, netip.MustParseAddr(b.Addr)); ok {
				if cur, seen := initial[hc.ID()]; !seen || cur == health.Down {
					initial[hc.ID()] = st
				}
			}
		}
	}
	c.bound.Store(int64(bound))
	c.decideBound.Store(max(c.decideBound.Load(), int64(decide)))
	c.refs.Store(&refs)
	c.hm.Sync(ctx, list, initial)
	c.weights.Sync(ctx, weight.Specs(s, nil))
}

// firstVerdictBound is the longest a new check of s takes to decide:
// its staggered first probe (up to an interval), then rise passes or fall
// failures, each up to an interval apart plus its timeout.
func firstVerdictBound(s health.Settings) time.Duration {
	return time.Duration(max(s.Rise, s.Fall)+1) * (s.Interval + s.Timeout)
}

// allDecided reports whether every check has reached its first verdict
// since the daemon started. It is latched: once true (or once the bound
// for the first verdicts passed, logged with the checks still
// undecided), it stays true, so a check added later never holds the node
// back. A node behind ECMP announces only then: before, a backend the
// cluster keeps in the rings is not usable here yet, and a flow whose
// slots name only such backends would be dropped.
func (c *checks) allDecided(now time.Time) bool {
	if c.decided.Load() {
		return true
	}
	p := c.refs.Load()
	if p == nil {
		return false // the first sync is still to come
	}
	var undecided []string
	for id, refs := range *p {
		if st, ok := c.hm.Status(id); !ok || !st.Decided {
			undecided = append(undecided, refs[0].VIP.String()+" "+refs[0].Addr.String())
		}
	}
	if len(undecided) > 0 {
		if now.Sub(c.started) < time.Duration(c.decideBound.Load()) {
			return false
		}
		c.log.Warn("health checks still undecided past their bound; announcing", "bound", time.Duration(c.decideBound.Load()), "undecided", undecided)
	}
	c.decided.Store(true)
	return true
}

// dialer attaches tc_probe the first time a check goes via a VIP; if it
// cannot, such checks fail with the reason.
func (c *checks) dialer() *probevia.Dialer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.via == nil {
		c.via = &probevia.Dialer{Backends: c.rec, Iface: c.iface, Log: c.log}
		if c.probes, c.via.Attached = tcprobe.Attach(c.probe, c.iface); c.via.Attached != nil {
			c.log.Error("checks via vip cannot run", "err", c.via.Attached)
		}
	}
	return c.via
}

// stop stops the checks, detaches tc_probe and gives back the
// accept_local that checks via a local VIP turned on.
func (c *checks) stop() {
	c.hm.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.probes != nil {
		c.probes.Close()
	}
	if c.via != nil {
		if err := c.via.Close(); err != nil {
			c.log.Warn("checks via vip", "err", err)
		}
	}
}
