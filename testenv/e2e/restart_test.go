package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// load opens new connections through the VIP until stopped, counting
// successes and failures.
type load struct {
	ok, failed atomic.Int64
	stop, done chan struct{}
}

func startLoad(t *testing.T, lab *netlab.Lab) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			if c, err := dialVIP(t, lab, vipAP); err == nil {
				c.c.Close()
				l.ok.Add(1)
			} else {
				l.failed.Add(1)
			}
		}
	}()
	return l
}

func (l *load) waitMore(t *testing.T, n int64) {
	t.Helper()
	testutil.WaitCount(t, l.ok.Load, l.ok.Load()+n, 20*time.Second, func() string {
		return fmt.Sprintf("load stalled at %d ok, %d failed", l.ok.Load(), l.failed.Load())
	})
}

func (l *load) finish() { close(l.stop); <-l.done }

// TestKill9Restart: kill -9 the daemon under load and start it again: no
// request fails, forwarding goes on without it, and the restarted daemon
// adopts the data plane without writing a single map.
func TestKill9Restart(t *testing.T) {
	lab, d := newLabDaemon(t, 3, fastCheck...)
	var long []conn
	for range 30 {
		c, err := dialVIP(t, lab, vipAP)
		if err != nil {
			t.Fatal(err)
		}
		long = append(long, c)
	}
	l := startLoad(t, lab)
	l.waitMore(t, 200)
	d.kill9(t)
	l.waitMore(t, 300) // forwarding without any daemon
	d2 := startDaemon(t, lab, d.stateDir)
	l.waitMore(t, 300)
	st := d2.waitStatus(t, "backends up after restart", allUp(3))
	l.waitMore(t, 200)
	l.finish()

	var started *api.Event
	evs := d2.mustCLI(t, "events")
	for _, line := range strings.Split(evs, "\n") {
		if strings.Contains(line, "daemon started") {
			started = &api.Event{Reason: line}
		}
	}
	if started == nil || !strings.Contains(started.Reason, "adopted=true, map writes=0") {
		t.Errorf("restart: %v, want adoption with 0 map writes\n%s", started, evs)
	}
	broken := 0
	for _, c := range long {
		if !c.alive() {
			broken++
		}
		c.c.Close()
	}
	t.Logf("requests: %d ok, %d failed across kill -9 and restart; long-lived: %d of %d broken; revision %d",
		l.ok.Load(), l.failed.Load(), broken, len(long), st.Revision)
	if l.failed.Load() != 0 || broken != 0 {
		t.Fatalf("%d requests failed, %d long-lived connections broke", l.failed.Load(), broken)
	}

	// sluice detach removes what the daemon left pinned.
	d2.stop()
	out, err := lab.LB.Command(context.Background(), sluiceBin, "detach", "--iface", lab.LB.Link, "--pin-root", lab.PinRoot()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sluice detached") {
		t.Fatalf("detach: %v %s", err, out)
	}
	if _, err := dialVIP(t, lab, vipAP); err == nil {
		t.Fatal("the VIP still answers after detach")
	}
}

// TestStandby: standbys join the ring exactly when usable actives fall
// below min_active, and leave it when they recover.
func TestStandby(t *testing.T) {
	lab, d := labWithDaemon(t, 3)
	d.mustCLI(t, "vip", "add", vipTCP, "--min-active", "2")
	for _, b := range lab.Backends {
		args := append([]string{"backend", "add", vipTCP, b.Addr.Addr().String()}, fastCheck...)
		if b.Name == "b3" {
			args = append(args, "--standby")
		}
		d.mustCLI(t, args...)
	}
	d.waitStatus(t, "all up", allUp(3))
	events := d.follow(t)
	count := func(n int) map[string]int {
		out := map[string]int{}
		for range n {
			c, err := dialVIP(t, lab, vipAP)
			if err != nil {
				t.Fatal(err)
			}
			out[c.backend]++
			c.c.Close()
		}
		return out
	}
	slots := func() int { return backendState(d.status(t), vipTCP, "10.77.0.13").RingSlots }
	if s, c := slots(), count(100); s != 0 || c["b3"] != 0 {
		t.Fatalf("both actives up: standby has %d ring slots and took %d of 100", s, c["b3"])
	}
	b1 := backendByName(lab, "b1")
	t0 := time.Now()
	b1.StopServers(true)
	events.next(t, "10.77.0.11", "down", t0)
	s, c := slots(), count(100)
	t.Logf("one active down: standby owns %d slots, took %d of 100 new connections (%v)", s, c["b3"], c)
	if s == 0 || c["b3"] == 0 || c["b1"] != 0 {
		t.Fatalf("one active down: standby slots %d, connections %v", s, c)
	}
	t1 := time.Now()
	if err := b1.StartServers(); err != nil {
		t.Fatal(err)
	}
	events.next(t, "10.77.0.11", "up", t1)
	if s, c := slots(), count(100); s != 0 || c["b3"] != 0 {
		t.Fatalf("actives back: standby has %d ring slots and took %d of 100", s, c["b3"])
	}
}
