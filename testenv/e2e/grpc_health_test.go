package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestGRPCHealthCheck: a backend checked with `--check grpc` against a
// real gRPC health server (grpc-go) in its namespace. Switching its
// service to NOT_SERVING takes it out of the data plane within fall ×
// interval (plus one probe's round trip), with the status named in the
// reason; SERVING again brings it back after rise passes. 10 rounds,
// timed from the switch to the map write (the event's Marked time).
func TestGRPCHealthCheck(t *testing.T) {
	lab, d := labWithDaemon(t, 2)
	d.mustCLI(t, "vip", "add", vipTCP, "--forward", "ipip")
	var servers []*netlab.GRPCHealth
	for _, b := range lab.Backends {
		g, err := netlab.StartGRPCHealth(b.Host, netlab.LabGRPCPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Stop)
		g.Set("model", true)
		servers = append(servers, g)
		d.mustCLI(t, "backend", "add", vipTCP, b.Addr.Addr().String(), "--check", "grpc", "--check-port", fmt.Sprint(netlab.LabGRPCPort),
			"--check-service", "model", "--interval", "100ms", "--timeout", "100ms", "--fall", "2", "--rise", "2")
	}
	d.waitStatus(t, "both backends up", allUp(2))
	b1 := lab.Backends[0].Addr.Addr().String()
	const interval, fall, rise = 100 * time.Millisecond, 2, 2
	var outs, ins []time.Duration
	for range 10 {
		at := time.Now()
		servers[0].Set("model", false)
		e := waitHealthEvent(t, d, b1, "down", at)
		outs = append(outs, e.Marked.Sub(at))
		if !strings.Contains(e.Reason, `service "model" is NOT_SERVING`) {
			t.Fatalf("down with reason %q, want the gRPC status named", e.Reason)
		}
		at = time.Now()
		servers[0].Set("model", true)
		e = waitHealthEvent(t, d, b1, "up", at)
		ins = append(ins, e.Marked.Sub(at))
	}
	t.Logf("NOT_SERVING → out of the data plane: p50 %v, max %v (fall %d × interval %v = %v)",
		testutil.Percentile(outs, .5), slices.Max(outs), fall, interval, fall*interval)
	t.Logf("SERVING again → back: p50 %v, max %v (rise %d × interval %v = %v)",
		testutil.Percentile(ins, .5), slices.Max(ins), rise, interval, rise*interval)
	// The first failing probe comes within an interval of the switch,
	// the fall-th one (fall-1) intervals later; a probe's round trip and
	// the map write come on top.
	if m := slices.Max(outs); m > fall*interval+50*time.Millisecond {
		t.Fatalf("out after %v, want within %v + 50ms: %v", m, fall*interval, outs)
	}
	if m := slices.Max(ins); m > rise*interval+50*time.Millisecond {
		t.Fatalf("back after %v, want within %v + 50ms: %v", m, rise*interval, ins)
	}
}

// waitHealthEvent waits for backend's health event to state to after
// since, with its map write done, and returns it.
func waitHealthEvent(t *testing.T, d *daemonProc, backend, to string, since time.Time) api.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, e := range d.events(t) {
			if e.Kind == "health" && e.Backend == backend && e.To == to && e.Time.After(since) && e.Marked != nil {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no health event %s → %s after %v", backend, to, since)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
