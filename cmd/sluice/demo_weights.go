package main

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/testenv"
)

// demoSlowStart is the backends' slow start in the demo, and demoTarget
// their load target (the queue of their model servers' gauge).
const (
	demoSlowStart = 4 * time.Second
	demoTarget    = 2
	demoRingSize  = state.DefaultRingSize
)

// startModelServers runs a model server (gRPC health, an agent, a
// queue gauge) on every backend, as model-serving replicas would.
func (d *demo) startModelServers() error {
	ms, err := testenv.StartModelServers(d.lab)
	if err != nil {
		return err
	}
	d.models = ms
	d.lab.OnClose(func() error {
		for _, m := range ms {
			m.Stop()
		}
		return nil
	})
	return nil
}

// weighted gives a demo backend its load metric and slow start.
func weighted(b *state.Backend) {
	b.Load = &state.Load{Metric: fmt.Sprintf("http://%s:%d/metrics#%s", b.Addr, testenv.LabMetricsPort, testenv.LabQueueSeries),
		Target: demoTarget, Interval: state.Duration(100 * time.Millisecond)}
	b.SlowStart = state.Duration(demoSlowStart)
}

func (d *demo) backendStatus(ctx context.Context, name string) (api.BackendStatus, error) {
	st, err := d.status(ctx)
	if err != nil {
		return api.BackendStatus{}, err
	}
	for _, lb := range d.lab.Backends {
		for _, b := range st.VIPs[0].Backends {
			if lb.Name == name && b.Addr == lb.Addr.Addr().String() {
				return b, nil
			}
		}
	}
	return api.BackendStatus{}, fmt.Errorf("no backend %s in status", name)
}

// waitFullWeight waits out the slow start of the backends just added.
func (d *demo) waitFullWeight(ctx context.Context) error {
	t0 := time.Now()
	for {
		st, err := d.status(ctx)
		if err != nil {
			return err
		}
		full := 0
		for _, b := range st.VIPs[0].Backends {
			if b.EffectiveWeight == float64(b.Weight) {
				full++
			}
		}
		if full == len(st.VIPs[0].Backends) {
			d.say("  new backends ramp in (slow start): all three at full weight %v later", time.Since(t0).Round(100*time.Millisecond))
			return nil
		}
		if time.Since(t0) > 3*demoSlowStart {
			return fmt.Errorf("backends not at full weight %v after they came up", 3*demoSlowStart)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slowStart shows b2, just recovered, ramping back in.
func (d *demo) slowStart(ctx context.Context) error {
	d.say("\n5. slow start (--slow-start %v): b2's weight ramps from 10%% to 100%% since it recovered", demoSlowStart)
	var shares []int
	for range 4 {
		b2, err := d.backendStatus(ctx, "b2")
		if err != nil {
			return err
		}
		count, err := d.quietBurst(ctx, 100)
		if err != nil {
			return err
		}
		d.say("  %-6v b2 weight %.2f (%5.1f%% of the ring), %3d of 100 new connections (b1 the rest; b3 drained)",
			time.Since(b2.LastChange).Round(100*time.Millisecond), b2.EffectiveWeight, 100*float64(b2.RingSlots)/demoRingSize, count["b2"])
		shares = append(shares, count["b2"])
		time.Sleep(demoSlowStart / 4)
	}
	if err := d.check(shares[0] < shares[len(shares)-1], "b2's share grew from %d%% to %d%%", shares[0], shares[len(shares)-1]); err != nil {
		return err
	}
	d.summary = append(d.summary, [2]string{"slow start: b2's share of new flows", fmt.Sprintf("%d%% → %d%%", shares[0], shares[len(shares)-1])})
	return nil
}

// overload shows b1 losing new flows while its queue is 4× its target.
func (d *demo) overload(ctx context.Context) error {
	d.say("\n6. b1's queue gauge (%s) goes to %d, 4× its --load-target %d", testenv.LabQueueSeries, 4*demoTarget, demoTarget)
	before, err := d.quietBurst(ctx, 100)
	if err != nil {
		return err
	}
	d.models["b1"].SetQueue(4 * demoTarget)
	deadline := time.Now().Add(10 * time.Second)
	var b1 api.BackendStatus
	for b1.EffectiveWeight == 0 || b1.EffectiveWeight == 1 {
		if time.Now().After(deadline) {
			return fmt.Errorf("b1 was not reweighted within 10s")
		}
		time.Sleep(50 * time.Millisecond)
		if b1, err = d.backendStatus(ctx, "b1"); err != nil {
			return err
		}
	}
	d.say("  reweighted: b1 weight %.2f (%s)", b1.EffectiveWeight, b1.WeightReason)
	after, err := d.burst(ctx, 100)
	if err != nil {
		return err
	}
	if err := d.check(2*after["b1"] < before["b1"], "b1 took %d of 100 new connections, %d before (its established flows stay)", after["b1"], before["b1"]); err != nil {
		return err
	}
	d.models["b1"].SetQueue(0)
	d.summary = append(d.summary, [2]string{"b1 at 4× its load target: new flows", fmt.Sprintf("%d → %d of 100", before["b1"], after["b1"])})
	return nil
}

// quietBurst opens n short connections and counts them by backend.
func (d *demo) quietBurst(ctx context.Context, n int) (map[string]int, error) {
	count := map[string]int{}
	for range n {
		c, err := d.dial(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect to the VIP: %w", err)
		}
		c.c.Close()
		count[c.backend]++
	}
	return count, nil
}
