package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv"
)

// TestCheckViaVIP: checks through the forwarding path, for each forward
// mode. One VIP (port 7) checks its backends at their own addresses; a
// second (port 80, http) checks them via the VIP (`vip add --check-via
// vip`), and a third (53/udp) via the VIP per backend (`backend add
// --check-via vip`). Then b2 breaks the way half of the troubleshooting
// list does: its decap detached (ipip), or the VIP taken off its loopback
// (gue, dsr). The plain check stays up, while both checks via the VIP
// mark b2 down within fall × interval (plus a probe's timeout: these
// failures are silent drops) and its slots move: every HTTP request
// through the VIP still succeeds, none on b2. Repaired, b2 comes back.
func TestCheckViaVIP(t *testing.T) {
	for _, c := range []struct{ forward, fault string }{
		{"ipip", "decap detached"},
		{"gue", "vip off loopback"},
		{"dsr", "vip off loopback"},
	} {
		t.Run(c.forward, func(t *testing.T) { checkVia(t, c.forward, c.fault) })
	}
}

const (
	viaInterval = 100 * time.Millisecond
	viaTimeout  = 50 * time.Millisecond
	viaFall     = 3
)

func checkVia(t *testing.T, forward, fault string) {
	lab, d := labWithDaemon(t, 3)
	timing := []string{"--interval", viaInterval.String(), "--timeout", viaTimeout.String(), "--fall", fmt.Sprint(viaFall), "--rise", "2"}
	d.mustCLI(t, "vip", "add", vipTCP, "--forward", forward)
	d.mustCLI(t, "vip", "add", vipHTTP, "--forward", forward, "--check-via", "vip")
	d.mustCLI(t, "vip", "add", vipUDP, "--forward", forward)
	for _, b := range lab.Backends {
		a := b.Addr.Addr().String()
		d.mustCLI(t, append([]string{"backend", "add", vipTCP, a, "--check", "tcp"}, timing...)...)
		d.mustCLI(t, append([]string{"backend", "add", vipHTTP, a, "--check", "http"}, timing...)...)
		d.mustCLI(t, append([]string{"backend", "add", vipUDP, a, "--check", "udp", "--check-via", "vip"}, timing...)...)
	}
	d.waitStatus(t, "every check up, the ones via the vip included", allUp(9))
	b2 := lab.Backends[1]
	w := d.follow(t)
	at := time.Now()
	breakBackend(t, b2, fault, true)
	downs := waitVIPEvents(t, w, b2.Addr.Addr().String(), "down", at, vipHTTP, vipUDP)
	st := d.status(t)
	for _, vip := range []string{vipHTTP, vipUDP} {
		e := downs[vip]
		took := e.Marked.Sub(at)
		t.Logf("%s, %s: b2 down via the vip after %v (fall %d × interval %v = %v, timeout %v): %s",
			fault, vip, took.Round(time.Millisecond), viaFall, viaInterval, viaFall*viaInterval, viaTimeout, e.Reason)
		if bound := viaFall*viaInterval + viaTimeout + 50*time.Millisecond; took > bound {
			t.Errorf("%s: b2 down after %v, want within %v", vip, took, bound)
		}
		if !strings.Contains(e.Reason, "via vip 10.77.1.100:") {
			t.Errorf("%s: reason %q does not say the probe went via the vip", vip, e.Reason)
		}
		if bs := backendState(st, vip, b2.Addr.Addr().String()); bs.State != "down" || bs.RingSlots != 0 {
			t.Errorf("%s: b2 %s with %d ring slots, want down with none", vip, bs.State, bs.RingSlots)
		}
	}
	if bs := backendState(st, vipTCP, b2.Addr.Addr().String()); bs.State != "up" || bs.RingSlots == 0 || bs.LastChange.After(at) {
		t.Errorf("%s (plain check): b2 %s since %v with %d slots, want up since before the fault", vipTCP, bs.State, bs.LastChange, bs.RingSlots)
	}
	t.Logf("%s: the plain check of b2 (its own address) still up, %d ring slots", vipTCP, backendState(st, vipTCP, b2.Addr.Addr().String()).RingSlots)
	got := httpThroughVIP(t, lab, 60)
	if got[b2.Name] != 0 || got["error"] != 0 {
		t.Fatalf("60 requests through %s with b2 down via the vip: %v, want none on b2 and no error", vipHTTP, got)
	}
	t.Logf("60 requests through %s: %v", vipHTTP, got)
	at = time.Now()
	breakBackend(t, b2, fault, false)
	waitVIPEvents(t, w, b2.Addr.Addr().String(), "up", at, vipHTTP, vipUDP)
}

// breakBackend injects (or repairs) fault on b.
func breakBackend(t *testing.T, b *testenv.Backend, fault string, broken bool) {
	t.Helper()
	switch fault {
	case "vip off loopback":
		if err := b.SetVIPOnLoopback(testenv.LabVIP4, !broken); err != nil {
			t.Fatal(err)
		}
	case "decap detached":
		err := b.DetachDecap()
		if !broken {
			err = b.AttachDecap(context.Background())
		}
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown fault %q", fault)
	}
}

// waitVIPEvents waits for a health event of backend to state to after
// since on each of vips, and returns them by VIP.
func waitVIPEvents(t *testing.T, w *eventWatcher, backend, to string, since time.Time, vips ...string) map[string]api.Event {
	t.Helper()
	got := map[string]api.Event{}
	timeout := time.After(15 * time.Second)
	for len(got) < len(vips) {
		select {
		case e := <-w.ch:
			if e.Kind != "health" || e.Backend != backend || e.Time.Before(since) || e.Marked == nil {
				continue
			}
			if e.VIP == vipTCP {
				t.Fatalf("%s → %s on %s, checked at its own address: %s", backend, e.To, vipTCP, e.Reason)
			}
			if e.To == to {
				got[e.VIP] = e
			}
		case <-timeout:
			t.Fatalf("%s → %s: events only on %v of %v", backend, to, got, vips)
		}
	}
	return got
}

// httpThroughVIP sends n requests through vipHTTP from the client, each
// on a new connection, and counts the backends that answered ("error"
// for a request that failed).
func httpThroughVIP(t *testing.T, lab *testenv.Lab, n int) map[string]int {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return lab.Client.Dial(ctx, "tcp4", "", addr)
		}}}
	got := map[string]int{}
	for range n {
		resp, err := c.Get("http://" + testenv.LabVIP4.String() + "/")
		if err != nil {
			got["error"]++
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
		resp.Body.Close()
		if err != nil {
			got["error"]++
			continue
		}
		got[strings.TrimSpace(string(body))]++
	}
	return got
}
