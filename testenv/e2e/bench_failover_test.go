package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

const failoverRuns = 20

// BenchmarkFailover measures, in the lab, the failover figures the issues
// name: detection and apply times, and how long new connections keep
// failing after a backend dies. With SLUICE_BENCH_DOC set to a markdown
// file, it replaces the section between the bench-failover markers.
func BenchmarkFailover(b *testing.B) {
	lab, d := labWithDaemon(b, 4)
	d.mustCLI(b, "vip", "add", vipTCP)
	for _, be := range lab.Backends {
		d.mustCLI(b, append([]string{"backend", "add", vipTCP, be.Addr.Addr().String()}, fastCheck...)...)
	}
	d.waitStatus(b, "all up", allUp(4))
	events := d.follow(b)

	// Steady load; record when connections fail.
	var mu sync.Mutex
	var lastFail time.Time
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c, err := lab.Client.Dial(ctx, "tcp4", "", vipAP.String())
			cancel()
			if err == nil {
				c.SetDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 8)
				_, err = c.Read(buf)
				c.Close()
			}
			if err != nil {
				mu.Lock()
				lastFail = time.Now()
				mu.Unlock()
			}
		}
	}()
	victim := backendByName(lab, "b4")
	addr := victim.Addr.Addr().String()
	var detect, marked, applied, newOK []time.Duration
	for range failoverRuns {
		t0 := time.Now()
		victim.StopServers(false)
		e := events.next(b, addr, "down", t0)
		detect = append(detect, e.Time.Sub(t0))
		marked = append(marked, e.Marked.Sub(e.Time))
		applied = append(applied, e.Applied.Sub(e.Time))
		// New connections are healthy again once none failed for a while
		// after the ring swap.
		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		lf := lastFail
		mu.Unlock()
		if lf.After(t0) {
			newOK = append(newOK, lf.Sub(t0))
		} else {
			newOK = append(newOK, 0)
		}
		t1 := time.Now()
		if err := victim.StartServers(); err != nil {
			b.Fatal(err)
		}
		events.next(b, addr, "up", t1)
	}
	close(stop)
	<-done

	// Replica promotion: a failover VIP on the echo port of b1..b3 with a
	// no-op shell hook; kill the primary, time the first connection the
	// new primary accepts (probing with 20 ms connect attempts).
	const fvip = "10.77.1.100:80/tcp"
	hook := filepath.Join(b.TempDir(), "hook.sh")
	os.WriteFile(hook, []byte("#!/bin/sh\nexit 0\n"), 0o755)
	d.mustCLI(b, "vip", "add", fvip, "--policy", "failover", "--promote-cmd", hook)
	for i, be := range lab.Backends[:3] {
		d.mustCLI(b, append([]string{"backend", "add", fvip, be.Addr.Addr().String(), "--priority", fmt.Sprint(30 - 10*i)}, fastCheck...)...)
	}
	primary := func() string {
		for _, v := range d.status(b).VIPs {
			if v.VIP == fvip {
				return v.Primary
			}
		}
		return ""
	}
	d.waitStatus(b, "a primary", func(s api.Status) bool { return primary() != "" })
	var promo []time.Duration
	for range failoverRuns {
		old := primary()
		victim := backendByName(lab, nameOf(old))
		t0 := time.Now()
		victim.StopServers(true)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			c, err := lab.Client.Dial(ctx, "tcp4", "", "10.77.1.100:80")
			cancel()
			if err == nil {
				// The HTTP server answers with its name.
				fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
				c.SetDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 512)
				n, _ := io.ReadAtLeast(c, buf, 1)
				c.Close()
				if n > 0 && !strings.Contains(string(buf[:n]), nameOf(old)+"\n") {
					break
				}
			}
			if time.Since(t0) > 10*time.Second {
				b.Fatal("no promotion")
			}
		}
		promo = append(promo, time.Since(t0))
		if err := victim.StartServers(); err != nil {
			b.Fatal(err)
		}
		d.waitStatus(b, "old primary back", func(s api.Status) bool { return backendState(s, fvip, old).State == "up" })
	}
	row := func(name string, ds []time.Duration) string {
		// Three significant digits: the flag write takes microseconds,
		// the rest milliseconds.
		round := func(d time.Duration) time.Duration {
			unit := time.Microsecond
			for d >= 1000*unit && unit < time.Millisecond {
				unit *= 10
			}
			return d.Round(unit)
		}
		return fmt.Sprintf("| %s | %v | %v |", name, round(testutil.Percentile(ds, .5)), round(testutil.Percentile(ds, .99)))
	}
	table := strings.Join([]string{
		fmt.Sprintf("Measured %s by `make bench-failover` on %d CPUs (%s/%s): 4 backends, a steady stream of new client connections, one backend's server stopped (connections refused) %d times; health profile `interval 100ms, timeout 100ms, fall 2, rise 2`.",
			time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, failoverRuns),
		"",
		"| figure | p50 | p99 |",
		"|---|---:|---:|",
		row("detection: kill → health verdict", detect),
		row("apply: verdict → backend out of the data plane", marked),
		row("apply: verdict → ring swapped", applied),
		row("kill → new connections land only on healthy backends (last failed connect)", newOK),
		row("replica promotion: kill primary → first connection accepted by the new primary (shell hook)", promo),
	}, "\n")
	// The LB pair: a client probing the VIP at 1 kHz, the master's link
	// taken down (or a planned handoff), the longest silence per run.
	for _, adv := range []string{"100ms", "50ms"} {
		lp := newLBPair(b, adv, 2, 2)
		table += "\n" + row(fmt.Sprintf("LB pair, advert %s: master's link down → longest silence of a 1 kHz VIP prober", adv), unplannedGaps(b, lp, failoverRuns))
		if adv == "100ms" {
			table += "\n" + row("LB pair: planned `sluice ha failover` → longest silence of a 1 kHz VIP prober", plannedGaps(b, lp, failoverRuns))
		}
	}
	fmt.Println(table)
	if doc := os.Getenv("SLUICE_BENCH_DOC"); doc != "" {
		if err := testutil.ReplaceSection(doc, "bench-failover", table); err != nil {
			b.Fatal(err)
		}
	}
}
