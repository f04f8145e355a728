package control

import (
	"fmt"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/weight"
)

// newWeights makes the engine of effective weights and hands its
// verdicts to the reconciler.
func (d *Daemon) newWeights() {
	d.weights = weight.New(weight.Options{Interval: d.opts.ReweightInterval, Threshold: d.opts.ReweightThreshold,
		OnReweight: d.onReweight, OnState: d.onAgentState, OnAnswer: d.metrics.weightAnswer})
}

// onReweight applies moved weights (the rings follow) and records them.
func (d *Daemon) onReweight(changes []weight.Change) {
	res := d.apply("reweight")
	for _, c := range changes {
		d.events.Add(api.Event{Time: res.Done, Kind: "reweight", VIP: c.VIP, Backend: c.Addr,
			From: fmt.Sprintf("%d%%", c.From), To: fmt.Sprintf("%d%%", c.To), Reason: c.Reason, Applied: &res.Done})
	}
	d.log.Info("reweight", "backends", len(changes), "map_writes", res.Writes)
}

// onAgentState applies an agent's drain, down or maint (or its end) at
// once, as a failed health check is.
func (d *Daemon) onAgentState(k weight.Key, why string) {
	res := d.apply("agent state")
	to := "out"
	if why == "" {
		to, why = "in", "agent: new flows allowed again"
	}
	d.events.Add(api.Event{Time: res.Done, Kind: "agent", VIP: k.VIP, Backend: k.Addr, To: to, Reason: why, Applied: &res.Done})
	d.log.Info("agent", "vip", k.VIP, "backend", k.Addr, "state", to, "reason", why)
}
