package control

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/netif"
	"github.com/sluicelb/sluice/control/state"
)

// startFlowSync shares this cluster node's connection table with the
// other live nodes (--flow-sync-key): the entries its data plane writes
// go to each of them, and their tables are copied here before the node
// may announce.
func (d *Daemon) startFlowSync(ctx context.Context) error {
	o := *d.opts.FlowSync
	o.Node = d.opts.Cluster.Node
	var err error
	if o.Boot, err = state.NextBoot(d.opts.StateDir, time.Now()); err != nil {
		return err
	}
	if o.Local = netif.Addr(d.opts.Iface); !o.Local.IsValid() {
		return fmt.Errorf("--flow-sync-key: %s has no IP address to listen on", d.opts.Iface)
	}
	if d.opts.FlowTableSize > 0 {
		o.MaxFlows = 2 * int(d.opts.FlowTableSize) // both families
	}
	r, err := d.dp.FlowEvents()
	if err != nil {
		return fmt.Errorf("flow sync: %w", err)
	}
	if d.flows, err = flowsync.New(o, d.cl, pairHost{d}, d.dp, d.log); err != nil {
		r.Close()
		return err
	}
	d.flows.OnJoined = func(j flowsync.Joined) {
		d.events.Add(api.Event{Kind: "config", Reason: fmt.Sprintf("flow sync: copied %d flows from %d nodes in %v (%d for backends unknown here; gave up on %v)",
			j.Applied, len(j.From), j.Took.Round(time.Millisecond), j.Unknown, j.GaveUp)})
		d.mu.Lock()
		a := d.bgp
		d.mu.Unlock()
		if a != nil {
			a.Kick() // the announcement waited for this
		}
	}
	d.metrics.reg.MustRegister(d.flows.Collectors()...)
	go d.flows.Run(ctx, r)
	return nil
}
