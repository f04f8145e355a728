package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "a guided tour of the data plane in a throwaway lab of network namespaces (needs root)",
		Action: func(c *cli.Context) error {
			return runDemo(c.Context, c.App.Writer)
		},
	}
}

type demo struct {
	w       io.Writer
	lab     *testenv.Lab
	dp      *loader.Datapath
	vip     loader.VIPKey
	summary [][2]string
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

func runDemo(ctx context.Context, w io.Writer) error {
	start := time.Now()
	d := &demo{w: w}
	d.say("sluice demo: a client, an XDP load balancer and 3 backends, each in its own network namespace")
	lab, err := testenv.NewLab(ctx, nil, testenv.LabOptions{})
	if err != nil {
		return fmt.Errorf("build lab: %w", err)
	}
	d.lab = lab
	defer func() {
		if err := lab.Close(); err != nil {
			d.say("cleanup: %v", err)
		} else {
			d.say("lab removed: no namespace, link or pinned object left behind")
		}
	}()
	if err := d.setup(ctx); err != nil {
		return err
	}
	steps := []func(context.Context) error{d.spread, d.failover, d.drain}
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

func (d *demo) setup(ctx context.Context) error {
	dp, err := d.lab.LB.AttachLB(ctx, loader.Options{Mode: loader.ModeNative, FlowTableSize: 65536})
	if err != nil {
		return err
	}
	d.dp = dp
	d.lab.OnClose(dp.Close)
	if _, err := dp.SetConfig(loader.Config{Seed: 0x51ce, MAC: d.lab.LB.MAC}); err != nil {
		return err
	}
	d.vip = loader.VIPKey{Addr: testenv.LabVIP4, Port: testenv.LabEchoPort, Proto: loader.TCP}
	if _, err := dp.SetVIP(d.vip, loader.VIP{ID: 0, Forward: loader.ForwardIPIP}); err != nil {
		return err
	}
	for i, b := range d.lab.Backends {
		if err := d.setBackend(i, loader.BackendUsable); err != nil {
			return err
		}
		_ = b
	}
	if err := d.ring(1, 2, 3); err != nil {
		return err
	}
	d.say("XDP attached natively to %s; VIP %s forwards by IPIP to b1, b2, b3", d.lab.LB.Link, d.vip)
	return nil
}

func (d *demo) setBackend(i int, flags loader.BackendFlags) error {
	b := d.lab.Backends[i]
	_, err := d.dp.SetBackend(uint32(i+1), loader.Backend{Addr: b.Addr.Addr(), VIPID: 0, Flags: flags, MAC: b.MAC})
	return err
}

// ring fills a ring evenly with the given backend indices (the daemon
// builds Maglev rings; the demo drives the data plane directly).
func (d *demo) ring(backends ...uint32) error {
	ring := make([]uint32, 65537)
	for i := range ring {
		ring[i] = backends[i%len(backends)]
	}
	_, err := d.dp.ReplaceRing(d.vip, ring)
	return err
}

func (d *demo) dial(ctx context.Context) (net.Conn, string, error) {
	c, err := d.lab.Client.Dial(ctx, "tcp4", "", netip.AddrPortFrom(testenv.LabVIP4, testenv.LabEchoPort).String())
	if err != nil {
		return nil, "", err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", err
	}
	c.SetDeadline(time.Time{})
	return c, strings.TrimSpace(name), nil
}

// burst opens n short connections and counts who answered.
func (d *demo) burst(ctx context.Context, n int) (map[string]int, error) {
	count := map[string]int{}
	for range n {
		c, name, err := d.dial(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect to the VIP: %w", err)
		}
		c.Close()
		count[name]++
	}
	return count, nil
}

func (d *demo) chart(count map[string]int, n int) {
	for _, b := range d.lab.Backends {
		bar := strings.Repeat("█", count[b.Name]*50/n)
		d.say("  %-3s %-50s %3d (%4.1f%%)", b.Name, bar, count[b.Name], 100*float64(count[b.Name])/float64(n))
	}
}

// echo checks a long-lived connection still carries data.
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

var longLived []struct {
	c    net.Conn
	name string
}

func (d *demo) spread(ctx context.Context) error {
	d.say("\n1. traffic spread: 30 long-lived connections, then 300 short ones through the VIP")
	for range 30 {
		c, name, err := d.dial(ctx)
		if err != nil {
			return err
		}
		longLived = append(longLived, struct {
			c    net.Conn
			name string
		}{c, name})
	}
	count, err := d.burst(ctx, 300)
	if err != nil {
		return err
	}
	d.chart(count, 300)
	for _, b := range d.lab.Backends {
		if err := d.check(count[b.Name] >= 60, "%s took %d of 300", b.Name, count[b.Name]); err != nil {
			return err
		}
	}
	d.summary = append(d.summary, [2]string{"spread over 3 backends", fmt.Sprintf("%d / %d / %d", count["b1"], count["b2"], count["b3"])})
	return nil
}

func (d *demo) failover(ctx context.Context) error {
	d.say("\n2. b2 fails: it is marked unusable and leaves the ring")
	t0 := time.Now()
	if err := d.setBackend(1, 0); err != nil {
		return err
	}
	marked := time.Since(t0)
	if err := d.ring(1, 3); err != nil {
		return err
	}
	applied := time.Since(t0)
	d.say("  backend flag written in %v, ring swapped in %v", marked.Round(time.Microsecond), applied.Round(time.Microsecond))
	count, err := d.burst(ctx, 300)
	if err != nil {
		return err
	}
	d.chart(count, 300)
	if err := d.check(count["b2"] == 0, "no new connection reached b2"); err != nil {
		return err
	}
	alive, total := 0, 0
	for _, l := range longLived {
		if l.name == "b2" {
			continue
		}
		total++
		if echo(l.c) {
			alive++
		}
	}
	if err := d.check(alive == total, "%d of %d flows on healthy backends kept their backend", alive, total); err != nil {
		return err
	}
	d.summary = append(d.summary,
		[2]string{"failover: mark unusable", marked.Round(time.Microsecond).String()},
		[2]string{"failover: ring swapped", applied.Round(time.Microsecond).String()},
		[2]string{"healthy flows that survived", fmt.Sprintf("%d/%d", alive, total)})
	return nil
}

func (d *demo) drain(ctx context.Context) error {
	d.say("\n3. b3 drains (weight 0): no new flows, existing flows continue")
	if err := d.setBackend(2, loader.BackendUsable|loader.BackendDraining); err != nil {
		return err
	}
	if err := d.ring(1); err != nil {
		return err
	}
	count, err := d.burst(ctx, 100)
	if err != nil {
		return err
	}
	d.chart(count, 100)
	if err := d.check(count["b3"] == 0 && count["b1"] == 100, "all 100 new connections went to b1"); err != nil {
		return err
	}
	alive, total := 0, 0
	for _, l := range longLived {
		if l.name != "b3" {
			continue
		}
		total++
		if echo(l.c) {
			alive++
		}
	}
	if err := d.check(alive == total, "%d of %d flows on draining b3 still flow", alive, total); err != nil {
		return err
	}
	for _, l := range longLived {
		l.c.Close()
	}
	d.summary = append(d.summary, [2]string{"drained b3: flows kept", fmt.Sprintf("%d/%d", alive, total)})
	return nil
}
