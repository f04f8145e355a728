package control

import (
	"fmt"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
)

// onHealth applies a health verdict at once, times verdict -> maps and
// records it; failover VIPs may need a promotion.
func (d *Daemon) onHealth(e health.Event) {
	marked, applied, err := d.core.verdict(e)
	d.metrics.Applied(applied.Sub(e.Time))
	if err != nil {
		d.log.Error("apply health verdict", "err", err)
	}
	for _, ref := range d.checks.of(e.Check) {
		vip, addr := ref.VIP.String(), ref.Addr.String()
		d.metrics.Transition(vip, addr, string(e.To))
		d.events.Add(api.Event{Time: e.Time, Kind: "health", VIP: vip, Backend: addr, From: string(e.From), To: string(e.To),
			Reason: e.Reason, Marked: &marked, Applied: &applied})
	}
	d.log.Info("health transition", "target", e.Check.Probe.Addr, "from", e.From, "to", e.To, "reason", e.Reason,
		"marked", marked.Sub(e.Time), "applied", applied.Sub(e.Time))
	d.fo.Decide(d.core.applied.Load())
}

// onReweight applies moved weights and agent states (the rings follow)
// in one apply, and records them.
func (d *Daemon) onReweight(changes []weight.Change, states []weight.StateChange) {
	res := d.core.reapply("reweight")
	for _, c := range changes {
		d.events.Add(api.Event{Time: res.Done, Kind: "reweight", VIP: c.VIP, Backend: c.Addr,
			From: fmt.Sprintf("%d%%", c.From), To: fmt.Sprintf("%d%%", c.To), Reason: c.Reason, Applied: &res.Done})
	}
	for _, s := range states {
		to, why := "out", s.Why
		if why == "" {
			to, why = "in", "agent: new flows allowed again"
		}
		d.events.Add(api.Event{Time: res.Done, Kind: "agent", VIP: s.VIP, Backend: s.Addr, To: to, Reason: why, Applied: &res.Done})
		d.log.Info("agent", "vip", s.VIP, "backend", s.Addr, "state", to, "reason", why)
	}
	d.log.Info("reweight", "backends", len(changes), "agent_states", len(states), "map_writes", res.Writes)
}
