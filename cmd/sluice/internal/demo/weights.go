package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
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
	ms, err := netlab.StartModelServers(d.lab)
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
	b.Load = &state.Load{Metric: fmt.Sprintf("http://%s:%d/metrics#%s", b.Addr, netlab.LabMetricsPort, netlab.LabQueueSeries),
		Target: demoTarget, Interval: state.Duration(100 * time.Millisecond)}
	b.SlowStart = state.Duration(demoSlowStart)
}

// backendOf is backend name of the demo VIP in st.
func (d *demo) backendOf(st api.Status, name string) api.BackendStatus {
	for _, lb := range d.lab.Backends {
		for _, b := range st.VIPs[0].Backends {
			if lb.Name == name && b.Addr == lb.Addr.Addr().String() {
				return b
			}
		}
	}
	return api.BackendStatus{}
}

// waitFullWeight waits out the slow start of the backends just added.
func (d *demo) waitFullWeight(ctx context.Context) error {
	t0 := time.Now()
	if _, err := d.waitStatus(ctx, 3*demoSlowStart, "all at full weight", func(st api.Status) bool {
		for _, b := range st.VIPs[0].Backends {
			if b.EffectiveWeight != float64(b.Weight) {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	d.say("  new backends ramp in (slow start): all three at full weight %v later", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// slowStart shows b2, just recovered, ramping back in.
func (d *demo) slowStart(ctx context.Context) error {
	d.say("\n5. slow start (--slow-start %v): b2's weight ramps from 10%% to 100%% since it recovered", demoSlowStart)
	var shares []int
	for range 4 {
		st, err := d.status(ctx)
		if err != nil {
			return err
		}
		b2 := d.backendOf(st, "b2")
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
	d.say("\n6. b1's queue gauge (%s) goes to %d, 4× its --load-target %d", netlab.LabQueueSeries, 4*demoTarget, demoTarget)
	before, err := d.quietBurst(ctx, 100)
	if err != nil {
		return err
	}
	d.models["b1"].SetQueue(4 * demoTarget)
	st, err := d.waitStatus(ctx, 10*time.Second, "b1 reweighted", func(st api.Status) bool {
		w := d.backendOf(st, "b1").EffectiveWeight
		return w != 0 && w != 1
	})
	if err != nil {
		return err
	}
	b1 := d.backendOf(st, "b1")
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
