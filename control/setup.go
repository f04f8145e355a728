package control

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/failover"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/metrics"
	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
)

// setUp configures the data plane and builds the parts around the core:
// the pair (if any), the reconciler, checks, weights, metrics and
// failover; then it applies the committed state.
func (d *Daemon) setUp(ctx context.Context) error {
	opts, c := d.opts, d.core
	if _, err := d.dp.SetConfig(loader.Config{Seed: loader.HashSeed(opts.Seed), MAC: d.dp.Iface().HardwareAddr,
		FlowSync: opts.HA != nil || opts.FlowSync != nil, VIPOpen: opts.VIPOpen, NoEcho: opts.VIPNoEcho, NewFlowLimit: opts.NewFlowLimit}); err != nil {
		return err
	}
	if err := d.newPair(); err != nil {
		return err
	}
	var err error
	if c.rec, err = reconcile.New(d.dp, opts.Resolver, opts.Seed, func() { c.Reapply("resolved next-hop macs") }); err != nil {
		return err
	}
	hm := &health.Manager{OnEvent: d.onHealth, OnResult: d.probed}
	wts := weight.New(weight.Options{Interval: opts.ReweightInterval, Threshold: opts.ReweightThreshold,
		OnReweight: d.onReweight, OnAnswer: func(k weight.Key, probe, result string) { d.metrics.WeightAnswer(k, probe, result) }})
	c.health, c.weights = hm, wts
	d.metrics = metrics.New(c, d.ready.Load)
	d.checks = &checks{hm: hm, weights: wts, rec: c.rec, log: d.log, iface: d.dp.Iface(), probe: d.dp.ProbeProgram(), seen: d.metrics.Seen, started: d.started}
	c.checks = d.checks
	d.fo = failover.New(ctx, failover.Options{Core: c, Coord: d.topo, Event: d.events.Add, Log: d.log, HookUser: d.hookCred, StateDir: opts.StateDir})
	c.changed = d.fo.Decide
	d.metrics.Register(d.fo.Collectors()...)
	d.metrics.Register(d.topo.Collectors()...)
	go wts.Run(ctx)
	c.mu.Lock()
	res, err := c.takeLocked(ctx)
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("apply committed state: %w", err)
	}
	d.log.Info("daemon started", "iface", opts.Iface, "revision", c.Revision(), "adopted", d.dp.Adopted(), "map_writes", res.Writes)
	d.events.Add(api.Event{Kind: "config", Reason: fmt.Sprintf("daemon started (adopted=%v, map writes=%d)", d.dp.Adopted(), res.Writes), Revision: c.Revision()})
	return nil
}

// start runs the topology and the routes once the committed state is in
// the maps, and looks for failover VIPs without a primary.
func (d *Daemon) start(ctx context.Context) error {
	d.ready.Store(true)
	if err := d.topo.Start(ctx); err != nil {
		return fmt.Errorf("start %s: %w", d.topo.Role(), err)
	}
	r, err := newRoutes(ctx, d.opts.BGP, d.opts.Iface, d.core, d.events, d.log)
	if err != nil {
		return err
	}
	d.routes = r
	d.core.setKick(r.Kick) // health verdicts already apply, and kick it
	d.metrics.Register(r.Collectors()...)
	go r.Run(ctx)
	go d.fo.Check()
	return nil
}

// newPair makes the LB pair the options ask for the daemon's topology.
func (d *Daemon) newPair() error {
	if d.opts.HA == nil {
		return nil
	}
	o := *d.opts.HA
	var err error
	if o.Boot, err = state.NextBoot(d.opts.StateDir, time.Now()); err != nil {
		return err
	}
	if d.opts.FlowTableSize > 0 {
		o.MaxFlows = 2 * int(d.opts.FlowTableSize) // both families
	}
	o.Store = d.core.store
	p, err := pair.New(o, d.core, flowEvents{d.dp}, d.log)
	if err != nil {
		return err
	}
	p.OnEvent, p.OnMaster = d.events.Add, func() { d.fo.Check() }
	d.topo, d.core.topo = p, p
	return nil
}

// flowEvents hands the data plane's connection-table writes to flow sync
// as its reader interface (not a typed nil on error).
type flowEvents struct{ Datapath }

func (f flowEvents) FlowEvents() (flowsync.FlowReader, error) {
	r, err := f.Datapath.FlowEvents()
	if err != nil {
		return nil, err
	}
	return r, nil
}
