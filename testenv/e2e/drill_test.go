package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

// udpLoad sends UDP queries to the VIP and counts answers per backend with
// their times, an independent record to hold drill reports against.
type udpLoad struct {
	mu      sync.Mutex
	answers []struct {
		at      time.Time
		backend string
	}
	stop, done chan struct{}
}

func (u *udpLoad) count(from, to time.Time) map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]int{}
	for _, a := range u.answers {
		if a.at.After(from) && a.at.Before(to) {
			out[a.backend]++
		}
	}
	return out
}

// TestDrills runs each drill action under load and holds its report
// against the test's own observations; the original state must be back.
func TestDrills(t *testing.T) {
	dir := t.TempDir()
	script, _ := hookScript(t, dir)
	lab, d := failoverLab(t, "--promote-cmd", script)
	d.mustCLI(t, "vip", "add", "10.77.1.100:53/udp", "--forward", "dsr")
	for _, b := range lab.Backends {
		d.mustCLI(t, append([]string{"backend", "add", "10.77.1.100:53/udp", b.Addr.Addr().String(), "--check", "udp"},
			"--interval", "100ms", "--timeout", "100ms", "--fall", "2", "--rise", "2")...)
	}
	d.waitStatus(t, "all up and a primary", func(s api.Status) bool {
		up := 0
		for _, v := range s.VIPs {
			for _, b := range v.Backends {
				if b.State == "up" {
					up++
				}
			}
		}
		return up == 6 && primaryOf(s) == "10.77.0.11"
	})

	// UDP load from many source ports, so the Maglev VIP spreads it.
	u := &udpLoad{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(u.done)
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			select {
			case <-u.stop:
				return
			default:
			}
			c, err := lab.Client.Dial(context.Background(), "udp4", "", "10.77.1.100:53")
			if err != nil {
				continue
			}
			c.Write([]byte("q"))
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			c.Close()
			if err == nil {
				u.mu.Lock()
				u.answers = append(u.answers, struct {
					at      time.Time
					backend string
				}{time.Now(), strings.TrimSpace(string(buf[:n]))})
				u.mu.Unlock()
			}
		}
	}()
	defer func() { close(u.stop); <-u.done }()
	l := startLoad(t, lab) // TCP load on the failover VIP
	defer l.finish()

	run := func(args ...string) (api.DrillReport, time.Time, time.Time) {
		t.Helper()
		before := time.Now()
		out := d.mustCLI(t, append([]string{"drill", "run", "-o", "json", "--hold", "2s"}, args...)...)
		after := time.Now()
		var rep api.DrillReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("drill report: %v\n%s", err, out)
		}
		// The report's own timestamps sit within the test's, 20 ms either side.
		if rep.Started.Before(before.Add(-20*time.Millisecond)) || rep.Finished.After(after.Add(20*time.Millisecond)) {
			t.Fatalf("report ran %v..%v, the test saw %v..%v", rep.Started, rep.Finished, before, after)
		}
		if !rep.Pass || len(rep.NotRestored) != 0 {
			t.Fatalf("drill %v failed: %v, not restored %v", args, rep.Failures, rep.NotRestored)
		}
		return rep, before, after
	}

	// disable-backend on the Maglev VIP.
	rep, _, _ := run("--vip", "10.77.1.100:53/udp", "--action", "disable-backend", "10.77.0.12", "--max-apply", "1s")
	var during time.Time
	for _, s := range rep.Steps {
		if strings.HasPrefix(s.What, "action") {
			during = s.Time
		}
	}
	seen := u.count(during.Add(100*time.Millisecond), during.Add(1900*time.Millisecond))
	for _, b := range rep.Backends {
		name := nameOf(b.Addr)
		if b.Addr == "10.77.0.12" {
			if b.DuringPackets != 0 || seen[name] != 0 {
				t.Fatalf("disabled backend: report counted %d packets, the test saw %d answers", b.DuringPackets, seen[name])
			}
			continue
		}
		if b.DuringPackets == 0 || seen[name] == 0 {
			t.Fatalf("%s: report counted %d packets, the test saw %d answers", b.Addr, b.DuringPackets, seen[name])
		}
	}
	t.Logf("disable-backend: commit %.1f ms, apply %.1f ms, during shares %v, test saw %v", 1000*rep.CommitSeconds, 1000*rep.ApplySeconds, shares(rep), seen)
	if st := backendState(d.status(t), "10.77.1.100:53/udp", "10.77.0.12"); st.State != "up" {
		t.Fatalf("10.77.0.12 not restored: %s", st.State)
	}

	// fail-primary on the failover VIP: a replica takes over, then the
	// original primary is put back.
	epoch := d.status(t).VIPs[1].Epoch
	rep, _, _ = run("--vip", vipTCP, "--action", "fail-primary", "--max-apply", "1s")
	if !strings.Contains(rep.HookOutput, "promoted") {
		t.Fatalf("fail-primary report shows no promotion: %+v", rep)
	}
	st := d.status(t)
	if primaryOf(st) != "10.77.0.11" || st.VIPs[1].Epoch < epoch+2 {
		t.Fatalf("after fail-primary: primary %s epoch %d (was %d)", primaryOf(st), st.VIPs[1].Epoch, epoch)
	}
	t.Logf("fail-primary: apply %.1f ms, during shares %v", 1000*rep.ApplySeconds, shares(rep))

	// promote a replica for real, then back.
	rep, _, _ = run("--vip", vipTCP, "--action", "promote", "10.77.0.13", "--max-apply", "1s")
	if rep.HookTime == "" || primaryOf(d.status(t)) != "10.77.0.11" {
		t.Fatalf("promote drill: hook %q, primary %s", rep.HookTime, primaryOf(d.status(t)))
	}
	for _, b := range rep.Backends {
		if b.Addr != "10.77.0.13" && b.DuringPackets != 0 {
			t.Fatalf("during the promote drill %s (not the primary) got %d packets", b.Addr, b.DuringPackets)
		}
	}
	t.Logf("promote: apply %.1f ms, hook %s", 1000*rep.ApplySeconds, rep.HookTime)

	var list []api.DrillReport
	if err := json.Unmarshal([]byte(d.mustCLI(t, "drill", "list", "-o", "json")), &list); err != nil || len(list) != 3 {
		t.Fatalf("drill list: %v, %d reports", err, len(list))
	}
	if out := d.mustCLI(t, "drill", "list"); !strings.Contains(out, "disable-backend") || !strings.Contains(out, "pass") {
		t.Fatalf("drill list table:\n%s", out)
	}
	if l.failed.Load() > 0 {
		t.Logf("TCP connections that failed during the drills (expected while the primary moves): %d", l.failed.Load())
	}
}

func shares(r api.DrillReport) map[string]string {
	out := map[string]string{}
	for _, b := range r.Backends {
		out[nameOf(b.Addr)] = strings.TrimRight(strings.TrimRight(jsonFloat(b.DuringShare), "0"), ".")
	}
	return out
}

func jsonFloat(f float64) string { b, _ := json.Marshal(float64(int(f*1000)) / 1000); return string(b) }
