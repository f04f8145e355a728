package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// hookScript writes a promotion hook that records its environment and
// fails for the addresses listed in failFor.
func hookScript(t testing.TB, dir string, failFor ...string) (script, log string) {
	log = filepath.Join(dir, "hook.log")
	script = filepath.Join(dir, "hook.sh")
	body := "#!/bin/sh\necho \"$SLUICE_VIP $SLUICE_OLD_PRIMARY $SLUICE_NEW_PRIMARY $SLUICE_EPOCH\" >> " + log + "\n"
	for _, a := range failFor {
		body += "[ \"$SLUICE_NEW_PRIMARY\" = \"" + a + "\" ] && exit 1\n"
	}
	body += "exit 0\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, log
}

func hookCalls(t testing.TB, log string) []string {
	raw, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(raw)), "\n")
}

func failoverLab(t *testing.T, hookArgs ...string) (*netlab.Lab, *daemonProc) {
	t.Helper()
	lab, d := labWithDaemon(t, 3)
	d.mustCLI(t, append([]string{"vip", "add", vipTCP, "--policy", "failover"}, hookArgs...)...)
	for i, b := range lab.Backends {
		d.mustCLI(t, append([]string{"backend", "add", vipTCP, b.Addr.Addr().String(), "--priority", fmt.Sprint(30 - 10*i)}, fastCheck...)...)
	}
	return lab, d
}

func primaryOf(st api.Status) string {
	for _, v := range st.VIPs {
		if v.VIP == vipTCP {
			return v.Primary
		}
	}
	return ""
}

func nameOf(addr string) string {
	return map[string]string{"10.77.0.11": "b1", "10.77.0.12": "b2", "10.77.0.13": "b3"}[addr]
}

// TestFailoverVIP: one primary at a time; killing it promotes the
// highest-priority replica after its hook ran once with the right
// environment; no interval sees two primaries take new connections; a
// recovered primary does not take the role back; epochs only go up,
// across restarts and restores.
func TestFailoverVIP(t *testing.T) {
	dir := t.TempDir()
	script, log := hookScript(t, dir)
	demoteLog := filepath.Join(dir, "demote.log")
	demote := "echo \"$SLUICE_OLD_PRIMARY $SLUICE_NEW_PRIMARY $SLUICE_EPOCH\" >> " + demoteLog
	lab, d := failoverLab(t, "--promote-cmd", script, "--demote-cmd", demote)
	st := d.waitStatus(t, "initial primary", func(s api.Status) bool { return primaryOf(s) == "10.77.0.11" })
	// Each run below picks the next primary from the backends it sees up:
	// the replicas' checks must have settled first.
	d.waitStatus(t, "every backend up", func(s api.Status) bool {
		up := 0
		for _, a := range []string{"10.77.0.11", "10.77.0.12", "10.77.0.13"} {
			if backendState(s, vipTCP, a).State == "up" {
				up++
			}
		}
		return up == 3
	})
	if calls := hookCalls(t, log); len(calls) != 1 || calls[0] != vipTCP+"  10.77.0.11 1" {
		t.Fatalf("initial promotion hook calls %q", calls)
	}
	for range 20 {
		c, err := dialVIP(t, lab, vipAP)
		if err != nil {
			t.Fatal(err)
		}
		c.c.Close()
		if c.backend != "b1" {
			t.Fatalf("new connection reached %s, only the primary b1 may take them", c.backend)
		}
	}

	// Sample the data plane's per-backend counters all along: no interval
	// may show new packets at two primaries, bar the one the switch falls in.
	samp := startSampler(t, d, vipTCP)
	defer samp.stop()
	var lat []time.Duration
	epoch := st.VIPs[0].Epoch
	for run := range 20 {
		st = d.status(t)
		old := primaryOf(st)
		// The next primary: the highest-priority other backend that is up.
		want := ""
		for _, a := range []string{"10.77.0.11", "10.77.0.12", "10.77.0.13"} {
			if a != old && backendState(st, vipTCP, a).State == "up" {
				want = a
				break
			}
		}
		victim := backendByName(lab, nameOf(old))
		calls := len(hookCalls(t, log))
		t0 := time.Now()
		victim.StopServers(true)
		// Dial until the new primary answers; greetings must go old...
		// then new, never back.
		var seq []string
		var got time.Duration
		deadline := time.Now().Add(10 * time.Second)
		for got == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("run %d: %s never took over from %s (saw %v)", run, want, old, seq)
			}
			c, err := dialVIPWithin(t, lab, vipAP, 20*time.Millisecond)
			if err != nil {
				continue
			}
			c.c.Close()
			seq = append(seq, c.backend)
			if c.backend == nameOf(want) {
				got = time.Since(t0)
			}
		}
		for i := range seq {
			if seq[i] != nameOf(old) && seq[i] != nameOf(want) {
				t.Fatalf("run %d: a connection reached %s, neither old nor new primary", run, seq[i])
			}
			if i > 0 && seq[i-1] == nameOf(want) && seq[i] == nameOf(old) {
				t.Fatalf("run %d: new connections alternated between two primaries: %v", run, seq)
			}
		}
		lat = append(lat, got)
		time.Sleep(50 * time.Millisecond) // a few more samples after the switch
		if err := samp.check(t0, time.Now(), old, want); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		nc := hookCalls(t, log)
		if len(nc) != calls+1 {
			t.Fatalf("run %d: hook called %d times for one promotion", run, len(nc)-calls)
		}
		st = d.status(t)
		wantCall := fmt.Sprintf("%s %s %s %d", vipTCP, old, want, st.VIPs[0].Epoch)
		if nc[len(nc)-1] != wantCall || st.VIPs[0].Epoch <= epoch {
			t.Fatalf("run %d: hook got %q, want %q (epoch before %d)", run, nc[len(nc)-1], wantCall, epoch)
		}
		epoch = st.VIPs[0].Epoch
		// The old primary recovers and rejoins as a replica: no failback.
		if err := victim.StartServers(); err != nil {
			t.Fatal(err)
		}
		d.waitStatus(t, "old primary back up", func(s api.Status) bool { return backendState(s, vipTCP, old).State == "up" })
		if p := primaryOf(d.status(t)); p != want {
			t.Fatalf("run %d: primary went back to %s without --failback", run, p)
		}
		if run == 0 {
			// The recovered old primary's demote hook ran once, naming it.
			deadline := time.Now().Add(5 * time.Second)
			for len(hookCalls(t, demoteLog)) == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if calls := hookCalls(t, demoteLog); len(calls) != 1 || !strings.HasPrefix(calls[0], old+" "+want+" ") {
				t.Fatalf("demote hook calls %q, want one for %s", calls, old)
			}
		}
	}
	p50, p99 := testutil.Percentile(lat, .5), testutil.Percentile(lat, .99)
	t.Logf("kill primary -> first connection accepted by the new primary, %d runs: p50 %v, p99 %v (target p99 ≤ 400ms + hook)", len(lat), p50, p99)
	// The target is judged from the logged figure; the assertion only
	// catches a promotion path that became grossly slower, without making
	// a noisy CI machine flaky.
	if p99 > time.Second {
		t.Errorf("promotion p99 %v", p99)
	}

	// Epochs survive a restart and a restore, and never go backwards.
	backup := filepath.Join(dir, "before.json")
	d.mustCLI(t, "backup", "save", backup)
	before := d.status(t).VIPs[0].Epoch
	cur := primaryOf(d.status(t))
	var other string
	for _, a := range []string{"10.77.0.11", "10.77.0.12", "10.77.0.13"} {
		if a != cur {
			other = a
			break
		}
	}
	d.mustCLI(t, "promote", vipTCP, other)
	promoted := d.status(t).VIPs[0].Epoch
	if promoted != before+1 || primaryOf(d.status(t)) != other {
		t.Fatalf("planned promotion: epoch %d -> %d, primary %s", before, promoted, primaryOf(d.status(t)))
	}
	d.mustCLI(t, "backup", "restore", backup)
	if e := d.status(t).VIPs[0].Epoch; e < promoted {
		t.Fatalf("restore took the epoch back from %d to %d", promoted, e)
	}
	d.stop()
	d2 := startDaemon(t, lab, d.stateDir)
	if e := d2.status(t).VIPs[0].Epoch; e < promoted {
		t.Fatalf("restart took the epoch back from %d to %d", promoted, e)
	}
}

// TestFailoverHooks: a failing hook moves on to the next replica; when
// every hook fails the VIP has no primary, says so, and drops.
func TestFailoverHooks(t *testing.T) {
	dir := t.TempDir()
	script, log := hookScript(t, dir, "10.77.0.12")
	lab, d := failoverLab(t, "--promote-cmd", script)
	d.waitStatus(t, "initial primary", func(s api.Status) bool { return primaryOf(s) == "10.77.0.11" })
	backendByName(lab, "b1").StopServers(true)
	d.waitStatus(t, "b3 promoted past failing b2", func(s api.Status) bool { return primaryOf(s) == "10.77.0.13" })
	calls := hookCalls(t, log)
	if n := len(calls); n < 3 || !strings.Contains(calls[n-2], "10.77.0.12") || !strings.Contains(calls[n-1], "10.77.0.13") {
		t.Fatalf("hook calls %q: want a failed attempt for .12, then .13", calls)
	}
	if !strings.Contains(d.mustCLI(t, "events"), "promotion hook failed") {
		t.Fatal("no event for the failed hook")
	}

	// Now every hook fails: kill b3; b1 is down, b2's hook fails.
	os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	backendByName(lab, "b3").StopServers(true)
	d.waitStatus(t, "no primary", func(s api.Status) bool { return primaryOf(s) == "" })
	if !strings.Contains(d.mustCLI(t, "events"), "VIP has no primary") {
		t.Fatal("no event saying the VIP has no primary")
	}
	if c, err := dialVIP(t, lab, vipAP); err == nil {
		c.c.Close()
		t.Fatalf("a VIP without primary accepted a connection (to %s)", c.backend)
	}
	body := d.mustCLI(t, "status", "-o", "json")
	if !strings.Contains(body, `"policy": "failover"`) {
		t.Fatalf("status lacks the policy:\n%s", body)
	}
	// The VIP was unavailable for a while: its measured availability says
	// so, and the timeline was kept.
	var rep api.AvailabilityReport
	if err := json.Unmarshal([]byte(d.mustCLI(t, "availability", "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if a := rep.VIPs[0].Measured["all"]; a <= 0 || a >= 1 {
		t.Fatalf("measured availability %v, want strictly between 0 and 1 after an outage", a)
	}
	if out := d.mustCLI(t, "availability"); !strings.Contains(out, "NINES") || !strings.Contains(out, "10.77.0.11") {
		t.Fatalf("availability table:\n%s", out)
	}
}

// sampler polls the daemon's per-backend packet counters of one VIP.
type sampler struct {
	mu      sync.Mutex
	samples []sample
	done    chan struct{}
	stopped chan struct{}
}

type sample struct {
	at  time.Time
	pkt map[string]uint64
}

func startSampler(t testing.TB, d *daemonProc, vip string) *sampler {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", d.socket)
	}}}
	s := &sampler{done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		for {
			select {
			case <-s.done:
				return
			default:
			}
			resp, err := hc.Get("http://sluice/v1/counters")
			if err != nil {
				continue
			}
			var c map[string]map[string]uint64
			json.NewDecoder(resp.Body).Decode(&c)
			resp.Body.Close()
			s.mu.Lock()
			s.samples = append(s.samples, sample{time.Now(), c[vip]})
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *sampler) stop() { close(s.done); <-s.stopped }

// check walks the intervals between samples in [from, to]: the backends
// whose counters grew must go old... then new..., with at most one interval
// (the one the switch falls in) showing both, and no other backend.
func (s *sampler) check(from, to time.Time, old, next string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seenNew, mixed := false, 0
	n := 0
	for i := 1; i < len(s.samples); i++ {
		a, b := s.samples[i-1], s.samples[i]
		if a.at.Before(from) || b.at.After(to) {
			continue
		}
		n++
		var grew []string
		for addr, p := range b.pkt {
			if p > a.pkt[addr] {
				grew = append(grew, addr)
			}
		}
		hasOld, hasNew := false, false
		for _, g := range grew {
			switch g {
			case old:
				hasOld = true
			case next:
				hasNew = true
			default:
				return fmt.Errorf("backend %s (neither primary) received packets", g)
			}
		}
		switch {
		case hasOld && hasNew:
			mixed++
			seenNew = true
		case hasNew:
			seenNew = true
		case hasOld && seenNew:
			return fmt.Errorf("the old primary %s received packets again after the new one %s", old, next)
		}
	}
	if mixed > 1 {
		return fmt.Errorf("%d sampling intervals saw both primaries receive packets", mixed)
	}
	if n < 10 {
		return fmt.Errorf("only %d counter samples in the run", n)
	}
	return nil
}

// TestHookChildDoesNotBlockPromotion: a promotion hook that exits 0 but
// leaves a child holding its output (`sleep 30 & exit 0`), with a 1 s hook
// timeout, does not hold the VIP without a primary: the replica is
// promoted as soon as the hook has exited.
func TestHookChildDoesNotBlockPromotion(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	t.Cleanup(func() {
		raw, _ := os.ReadFile(pids)
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	lab, d := failoverLab(t, "--promote-cmd", "sleep 30 & echo $! >> "+pids+"; exit 0", "--hook-timeout", "1s")
	d.waitStatus(t, "initial primary", func(s api.Status) bool { return primaryOf(s) == "10.77.0.11" })
	d.waitStatus(t, "the replicas up", func(s api.Status) bool { return backendState(s, vipTCP, "10.77.0.12").State == "up" })
	t0 := time.Now()
	backendByName(lab, "b1").StopServers(true)
	st := d.waitStatus(t, "a new primary", func(s api.Status) bool { return primaryOf(s) == "10.77.0.12" })
	took := time.Since(t0)
	t.Logf("kill -> new primary %v (detection 2 × 100 ms, hook exited at once, its child kept running)", took)
	// Detection (fall 2 at 100 ms) plus the hook: well under the 1 s hook
	// timeout, which the old hook runner waited out and then hung on.
	if took > time.Second {
		t.Fatalf("promotion took %v: the hook's child held it", took)
	}
	if st.VIPs[0].Epoch < 2 {
		t.Fatalf("epoch %d after a second promotion", st.VIPs[0].Epoch)
	}
}
