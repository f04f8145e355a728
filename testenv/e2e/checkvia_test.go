package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// TestCheckViaVIP: checks through the forwarding path, for each forward
// mode. One VIP (port 7) checks its backends at their own addresses; a
// second (port 80, http) checks them via the VIP (`vip add --check-via
// vip`), and so does one on the IPv6 VIP; a third (53/udp) via the VIP
// per backend (`backend add --check-via vip`). Then b2 breaks the way half of the troubleshooting
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
	d.mustCLI(t, "vip", "add", vip6HTTP, "--forward", forward, "--check-via", "vip")
	for _, b := range lab.Backends {
		a := b.Addr.Addr().String()
		d.mustCLI(t, append([]string{"backend", "add", vipTCP, a, "--check", "tcp"}, timing...)...)
		d.mustCLI(t, append([]string{"backend", "add", vipHTTP, a, "--check", "http"}, timing...)...)
		d.mustCLI(t, append([]string{"backend", "add", vipUDP, a, "--check", "udp", "--check-via", "vip"}, timing...)...)
		d.mustCLI(t, append([]string{"backend", "add", vip6HTTP, b.Addr6.Addr().String(), "--check", "http"}, timing...)...)
	}
	d.waitStatus(t, "every check up, the ones via the vip included", allUp(12))
	b2 := lab.Backends[1]
	w := d.follow(t)
	at := time.Now()
	breakBackend(t, b2, fault, true)
	b2v4, b2v6 := b2.Addr.Addr().String(), b2.Addr6.Addr().String()
	via := map[string]string{vipHTTP: b2v4, vipUDP: b2v4, vip6HTTP: b2v6} // VIP -> b2's address in it
	downs := waitVIPEvents(t, w, via, "down", at)
	st := d.status(t)
	for _, vip := range []string{vipHTTP, vipUDP, vip6HTTP} {
		e := downs[vip]
		took := e.Marked.Sub(at)
		t.Logf("%s, %s: b2 down via the vip after %v (fall %d × interval %v = %v, timeout %v): %s",
			fault, vip, took.Round(time.Millisecond), viaFall, viaInterval, viaFall*viaInterval, viaTimeout, e.Reason)
		if bound := viaFall*viaInterval + viaTimeout + 50*time.Millisecond; took > bound {
			t.Errorf("%s: b2 down after %v, want within %v", vip, took, bound)
		}
		if !strings.Contains(e.Reason, "via vip ") {
			t.Errorf("%s: reason %q does not say the probe went via the vip", vip, e.Reason)
		}
		if bs := backendState(st, vip, e.Backend); bs.State != "down" || bs.RingSlots != 0 {
			t.Errorf("%s: b2 %s with %d ring slots, want down with none", vip, bs.State, bs.RingSlots)
		}
	}
	if bs := backendState(st, vipTCP, b2v4); bs.State != "up" || bs.RingSlots == 0 || bs.LastChange.After(at) {
		t.Errorf("%s (plain check): b2 %s since %v with %d slots, want up since before the fault", vipTCP, bs.State, bs.LastChange, bs.RingSlots)
	}
	t.Logf("%s: the plain check of b2 (its own address) still up, %d ring slots", vipTCP, backendState(st, vipTCP, b2v4).RingSlots)
	got := httpThroughVIP(t, lab, 60)
	if got[b2.Name] != 0 || got["error"] != 0 {
		t.Fatalf("60 requests through %s with b2 down via the vip: %v, want none on b2 and no error", vipHTTP, got)
	}
	t.Logf("60 requests through %s: %v", vipHTTP, got)
	at = time.Now()
	breakBackend(t, b2, fault, false)
	waitVIPEvents(t, w, via, "up", at)
}

// vip6HTTP is the lab's IPv6 VIP on the HTTP port.
const vip6HTTP = "[fd77:1::100]:80/tcp"

// breakBackend injects (or repairs) fault on b.
func breakBackend(t *testing.T, b *netlab.Backend, fault string, broken bool) {
	t.Helper()
	switch fault {
	case "vip off loopback":
		for _, v := range []netip.Addr{netlab.LabVIP4, netlab.LabVIP6} {
			if err := b.SetVIPOnLoopback(v, !broken); err != nil {
				t.Fatal(err)
			}
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

// waitVIPEvents waits for a health event to state to after since of
// each VIP's backend in want (VIP -> backend), and returns them by VIP.
// An event of the VIP checked at its backends' own addresses fails it.
func waitVIPEvents(t *testing.T, w *eventWatcher, want map[string]string, to string, since time.Time) map[string]api.Event {
	t.Helper()
	got := map[string]api.Event{}
	timeout := time.After(15 * time.Second)
	for len(got) < len(want) {
		select {
		case e := <-w.ch:
			if e.Kind != "health" || e.Time.Before(since) || e.Marked == nil {
				continue
			}
			if e.VIP == vipTCP {
				t.Fatalf("%s → %s on %s, checked at its own address: %s", e.Backend, e.To, vipTCP, e.Reason)
			}
			if want[e.VIP] == e.Backend && e.To == to {
				got[e.VIP] = e
			}
		case <-timeout:
			t.Fatalf("→ %s: events only on %v of %v", to, got, want)
		}
	}
	return got
}

// httpThroughVIP sends n requests through vipHTTP from the client, each
// on a new connection, and counts the backends that answered ("error"
// for a request that failed).
func httpThroughVIP(t *testing.T, lab *netlab.Lab, n int) map[string]int {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return lab.Client.Dial(ctx, "tcp4", "", addr)
		}}}
	got := map[string]int{}
	for range n {
		resp, err := c.Get("http://" + netlab.LabVIP4.String() + "/")
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

// TestCheckViaLocalVIP: on a node that holds the VIP as an address of its
// own (the master of an LB pair), a probe to the VIP routes through
// loopback, where tc_probe meets it and sends it out of the interface.
// The daemon turns accept_local on, as the backends' answers come from
// the VIP; checks via the VIP come up, follow b2 losing the VIP on its
// loopback, and clients still reach the VIP.
func TestCheckViaLocalVIP(t *testing.T) {
	lab, d := labWithDaemon(t, 3)
	accept := "/proc/sys/net/ipv4/conf/" + lab.LB.Link + "/accept_local"
	if out, err := lab.LB.Command(context.Background(), "ip", "addr", "add", netlab.LabVIP4.String()+"/32", "dev", lab.LB.Link).CombinedOutput(); err != nil {
		t.Fatalf("add the vip to lb: %v\n%s", err, out)
	}
	if err := lab.LB.Sysctl("net.ipv4.conf."+lab.LB.Link+".accept_local", "0"); err != nil {
		t.Fatal(err)
	}
	d.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip", "--check-via", "vip")
	for _, b := range lab.Backends {
		d.mustCLI(t, "backend", "add", vipHTTP, b.Addr.Addr().String(), "--check", "http", "--interval", viaInterval.String(),
			"--timeout", viaTimeout.String(), "--fall", fmt.Sprint(viaFall), "--rise", "2")
	}
	d.waitStatus(t, "every check via the local vip up", allUp(3))
	if out, err := lab.LB.Command(context.Background(), "cat", accept).Output(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("accept_local on %s: %q, %v; want 1", lab.LB.Link, out, err)
	}
	b2 := lab.Backends[1]
	via := map[string]string{vipHTTP: b2.Addr.Addr().String()}
	w := d.follow(t)
	at := time.Now()
	breakBackend(t, b2, "vip off loopback", true)
	e := waitVIPEvents(t, w, via, "down", at)[vipHTTP]
	t.Logf("vip local on the lb: b2 down via the vip after %v: %s", e.Marked.Sub(at).Round(time.Millisecond), e.Reason)
	if got := httpThroughVIP(t, lab, 30); got[b2.Name] != 0 || got["error"] != 0 {
		t.Fatalf("30 requests through %s: %v, want none on b2 and no error", vipHTTP, got)
	}
	at = time.Now()
	breakBackend(t, b2, "vip off loopback", false)
	waitVIPEvents(t, w, via, "up", at)
	t.Logf("b2 back up via the local vip; accept_local on %s set to 1 by the daemon", lab.LB.Link)
}
