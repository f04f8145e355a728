// Package demo is `sluice demo`: the guided tour of a daemon in a
// throwaway lab, each step checked, with a summary of what it measured.
package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/internal/lab"
	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

const demoVIP = "10.77.1.100:7/tcp"

var demoVIPAddr = netip.MustParseAddrPort("10.77.1.100:7")

type demo struct {
	w       io.Writer
	lab     *netlab.Lab
	cl      *api.Client
	events  chan api.Event
	summary [][2]string
	long    []demoConn
	models  map[string]*netlab.ModelServer
}

type demoConn struct {
	c       net.Conn
	local   string
	backend string
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.w, format+"\n", args...) }

func (d *demo) check(ok bool, what string, args ...any) error {
	msg := fmt.Sprintf(what, args...)
	if !ok {
		d.say("  FAIL  %s", msg)
		return fmt.Errorf("demo check failed: %s", msg)
	}
	d.say("  ok    %s", msg)
	return nil
}

// Run runs the tour, writing what it does and finds to w; it needs root.
func Run(ctx context.Context, w io.Writer) error {
	start := time.Now()
	d := &demo{w: w}
	d.say("sluice demo: a client, the sluice daemon on an XDP load balancer, and 3 backends,")
	d.say("each in its own network namespace on this host.")
	lab, err := netlab.NewLab(ctx, nil, netlab.LabOptions{})
	if err != nil {
		return fmt.Errorf("build lab: %w", err)
	}
	d.lab = lab
	defer func() {
		for _, c := range d.long {
			c.c.Close()
		}
		if err := lab.Close(); err != nil {
			d.say("cleanup: %v", err)
		} else {
			d.say("lab removed: no namespace, link, pinned object or process left behind")
		}
	}()
	tmp, err := os.MkdirTemp("", "sluice-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	stop, err := d.startDaemon(ctx, tmp)
	if err != nil {
		return err
	}
	lab.OnClose(func() error {
		stop()
		return lab.LB.Do(func() error { return loader.DetachPinned(lab.LB.Link, lab.PinRoot()) })
	})
	if err := d.startModelServers(); err != nil {
		return err
	}
	steps := []func(context.Context) error{d.configure, d.spread, d.failover, d.drain, d.recover, d.slowStart, d.overload}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	d.summary = append(d.summary, [2]string{"total demo time", time.Since(start).Round(time.Millisecond).String()})
	d.say("\nsummary")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range d.summary {
		fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

func (d *demo) startDaemon(ctx context.Context, dir string) (func(), error) {
	ld, err := lab.StartDaemon(d.lab, dir, "", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	if err := ld.Wait(ctx, 20*time.Second); err != nil {
		ld.Stop()
		return nil, err
	}
	stop := ld.Stop
	d.cl = ld.Client
	d.events = make(chan api.Event, 256)
	go func() {
		_ = d.cl.Events(ctx, true, func(e api.Event) bool {
			d.events <- e
			return true
		})
	}()
	return stop, nil
}

func (d *demo) status(ctx context.Context) (api.Status, error) {
	var st api.Status
	err := d.cl.Do(ctx, "GET", "/v1/status", nil, nil, &st)
	return st, err
}

func (d *demo) waitEvent(addr, to string, since time.Time) (api.Event, error) {
	timeout := time.After(15 * time.Second)
	for {
		select {
		case e := <-d.events:
			if e.Kind == "health" && e.Backend == addr && e.To == to && !e.Time.Before(since) {
				return e, nil
			}
		case <-timeout:
			return api.Event{}, fmt.Errorf("no %s -> %s event within 15s", addr, to)
		}
	}
}

func (d *demo) configure(ctx context.Context) error {
	d.say("\n0. sluice vip add %s; sluice backend add ... --check tcp --interval 100ms --fall 2 --rise 2", demoVIP)
	d.say("   --load-metric http://ADDR:%d/metrics#%s --load-target %d --slow-start %v", netlab.LabMetricsPort, netlab.LabQueueSeries, demoTarget, demoSlowStart)
	if err := d.cl.Do(ctx, "POST", "/v1/vips", nil, api.VIPAddRequest{VIP: demoVIP, Forward: "ipip"}, nil); err != nil {
		return err
	}
	for _, b := range d.lab.Backends {
		be := state.Backend{Addr: b.Addr.Addr().String(), Weight: 1, Check: state.Check{Type: "tcp",
			Interval: state.Duration(100 * time.Millisecond), Timeout: state.Duration(100 * time.Millisecond), Rise: 2, Fall: 2}}
		weighted(&be)
		if err := d.cl.Do(ctx, "POST", "/v1/backends", nil, api.BackendAddRequest{VIP: demoVIP, Backend: be}, nil); err != nil {
			return err
		}
	}
	if _, err := d.waitStatus(ctx, 15*time.Second, "backends came up", func(st api.Status) bool {
		up := 0
		for _, b := range st.VIPs[0].Backends {
			if b.State == "up" {
				up++
			}
		}
		return up == len(d.lab.Backends)
	}); err != nil {
		return err
	}
	d.say("  the daemon attached XDP natively to %s; health checks pass on b1, b2, b3", d.lab.LB.Link)
	return d.waitFullWeight(ctx)
}

// waitStatus polls the status until ok holds, for at most within.
func (d *demo) waitStatus(ctx context.Context, within time.Duration, what string, ok func(api.Status) bool) (api.Status, error) {
	deadline := time.Now().Add(within)
	for {
		st, err := d.status(ctx)
		if err != nil {
			return st, err
		}
		if ok(st) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("demo: not %s within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *demo) dial(ctx context.Context) (demoConn, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := d.lab.Client.Dial(dctx, "tcp4", "", demoVIPAddr.String())
	if err != nil {
		return demoConn{}, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return demoConn{}, err
	}
	c.SetDeadline(time.Time{})
	return demoConn{c: c, local: c.LocalAddr().String(), backend: strings.TrimSpace(name)}, nil
}

// burst opens n short connections and charts the per-backend packet rates
// the data plane counted meanwhile (what `sluice stats` shows).
func (d *demo) burst(ctx context.Context, n int) (map[string]int, error) {
	before, err := d.status(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	count, err := d.quietBurst(ctx, n)
	if err != nil {
		return nil, err
	}
	after, err := d.status(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range api.Rates(before, after, time.Since(t0)) {
		if r.Backend == "" {
			continue
		}
		d.say("  %-11s %-9s %7.0f pps %s", r.Backend, r.State, r.PPS, api.ShareBar(r.Share))
	}
	return count, nil
}

func echo(c net.Conn) bool {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	buf := make([]byte, 5)
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping\n"
}

func (d *demo) spread(ctx context.Context) error {
	d.say("\n1. traffic spread: 30 long-lived connections, then 300 short ones through the VIP")
	for range 30 {
		c, err := d.dial(ctx)
		if err != nil {
			return err
		}
		d.long = append(d.long, c)
	}
	count, err := d.burst(ctx, 300)
	if err != nil {
		return err
	}
	for _, b := range d.lab.Backends {
		if err := d.check(count[b.Name] >= 60, "%s took %d of 300 connections", b.Name, count[b.Name]); err != nil {
			return err
		}
	}
	d.summary = append(d.summary, [2]string{"spread over b1 / b2 / b3", fmt.Sprintf("%d / %d / %d", count["b1"], count["b2"], count["b3"])})
	return nil
}

func (d *demo) failover(ctx context.Context) error {
	b2 := d.lab.Backends[1]
	d.say("\n2. b2 dies: its server process stops, new connections are refused")
	t0 := time.Now()
	b2.StopServers(false)
	e, err := d.waitEvent(b2.Addr.Addr().String(), "down", t0)
	if err != nil {
		return err
	}
	detect := e.Time.Sub(t0)
	marked, applied := e.Marked.Sub(e.Time), e.Applied.Sub(e.Time)
	d.say("  health verdict after %v (%s); backend out of the data plane %v later, ring swapped %v later",
		detect.Round(time.Millisecond), e.Reason, marked.Round(time.Microsecond), applied.Round(time.Microsecond))
	count, err := d.burst(ctx, 300)
	if err != nil {
		return err
	}
	if err := d.check(count["b2"] == 0, "none of 300 new connections reached b2"); err != nil {
		return err
	}
	alive, total := 0, 0
	var shown *demoConn
	for i, c := range d.long {
		if c.backend == "b2" {
			continue
		}
		total++
		if echo(c.c) {
			alive++
			if shown == nil {
				shown = &d.long[i]
			}
		}
	}
	if shown != nil {
		d.say("  for example: the flow from %s is still served by %s", shown.local, shown.backend)
	}
	if err := d.check(alive == total, "%d of %d flows on healthy backends kept their backend", alive, total); err != nil {
		return err
	}
	d.summary = append(d.summary,
		[2]string{"failure detected (interval 100ms, fall 2)", detect.Round(time.Millisecond).String()},
		[2]string{"verdict -> out of the data plane", marked.Round(time.Microsecond).String()},
		[2]string{"verdict -> ring swapped", applied.Round(time.Microsecond).String()},
		[2]string{"healthy flows that survived", fmt.Sprintf("%d/%d", alive, total)})
	return nil
}

func (d *demo) drain(ctx context.Context) error {
	d.say("\n3. sluice backend drain %s 10.77.0.13: b3 takes no new flows, keeps its own", demoVIP)
	if err := d.cl.Do(ctx, "POST", "/v1/backends/action", nil, api.BackendActionRequest{VIP: demoVIP, Addr: "10.77.0.13", Action: "drain"}, nil); err != nil {
		return err
	}
	count, err := d.burst(ctx, 100)
	if err != nil {
		return err
	}
	if err := d.check(count["b3"] == 0 && count["b1"] == 100, "all 100 new connections went to b1"); err != nil {
		return err
	}
	alive, total := 0, 0
	for _, c := range d.long {
		if c.backend != "b3" {
			continue
		}
		total++
		if echo(c.c) {
			alive++
		}
	}
	if err := d.check(alive == total, "%d of %d flows on draining b3 still flow", alive, total); err != nil {
		return err
	}
	d.summary = append(d.summary, [2]string{"drained b3: its flows kept", fmt.Sprintf("%d/%d", alive, total)})
	return nil
}

func (d *demo) recover(ctx context.Context) error {
	b2 := d.lab.Backends[1]
	d.say("\n4. b2 recovers; it returns after 2 passing checks (rise 2)")
	t0 := time.Now()
	if err := b2.StartServers(); err != nil {
		return err
	}
	e, err := d.waitEvent(b2.Addr.Addr().String(), "up", t0)
	if err != nil {
		return err
	}
	d.say("  back after %v: %s", e.Time.Sub(t0).Round(time.Millisecond), e.Reason)
	count, err := d.burst(ctx, 100)
	if err != nil {
		return err
	}
	if err := d.check(count["b2"] > 0 && count["b3"] == 0, "b2 takes new connections again (%d of 100); drained b3 still none", count["b2"]); err != nil {
		return err
	}
	d.summary = append(d.summary, [2]string{"recovery (rise 2)", e.Time.Sub(t0).Round(time.Millisecond).String()})
	return nil
}
