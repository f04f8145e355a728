package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// birdRoute is what BIRD holds of the VIP's route from protocol proto:
// whether it has one, and whether it carries GRACEFUL_SHUTDOWN (65535,0).
func birdRoute(t testing.TB, b *netlab.BIRD, proto string) (present, tagged bool) {
	t.Helper()
	out, err := b.Show(context.Background(), "route", "10.77.1.100/32", "protocol", proto, "all")
	if err != nil {
		t.Fatalf("birdc show route: %v\n%s", err, out)
	}
	return strings.Contains(out, "["+proto+" "), strings.Contains(out, "(65535,0)")
}

// TestBGPGracefulShutdownHolds: with --bgp-graceful-shutdown and a 2 s
// drain, `sluice node drain` tags node 1's route GRACEFUL_SHUTDOWN, and
// BIRD, read every 20 ms, sees the tag on it from the first tagged
// reading until the route is withdrawn (never the untagged route again),
// for most of the drain, and the route never comes back after the
// withdrawal until the node is undrained. On the old code the announcer's
// 200 ms update announced the route again untagged within the drain.
func TestBGPGracefulShutdownHolds(t *testing.T) {
	lc, b := newBGPCluster(t, 3, 3, false, "--bgp-learn", "500ms", "--bgp-graceful-shutdown", "--bgp-drain", "2s")
	waitHops(t, lc.lab.Router, b, "10.77.1.100", 3, 20*time.Second)
	done := make(chan string, 1)
	start := time.Now()
	go func() {
		out, err := lc.nodes[0].cli(t, "node", "drain")
		if err != nil {
			out = "failed: " + out
		}
		done <- out
	}()
	var firstTag, withdrawn, drained time.Time
	untaggedAfterTag, back := 0, 0
	for drained.IsZero() || time.Since(drained) < time.Second {
		select {
		case out := <-done:
			if strings.HasPrefix(out, "failed") {
				t.Fatalf("node drain: %s", out)
			}
			drained = time.Now()
		default:
		}
		present, tagged := birdRoute(t, b, "lb1")
		switch {
		case present && tagged && firstTag.IsZero() && withdrawn.IsZero():
			firstTag = time.Now()
		case present && !tagged && !firstTag.IsZero() && withdrawn.IsZero():
			untaggedAfterTag++
		case !present && withdrawn.IsZero():
			withdrawn = time.Now()
		case present && !withdrawn.IsZero():
			back++
		}
		if time.Since(start) > 15*time.Second {
			t.Fatal("node drain did not finish in 15 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	held := withdrawn.Sub(firstTag)
	t.Logf("node drain with a 2 s drain: tagged %v after it began, held tagged %v, then withdrawn; %d untagged readings in between, %d readings with the route back after the withdrawal",
		firstTag.Sub(start).Round(time.Millisecond), held.Round(time.Millisecond), untaggedAfterTag, back)
	if firstTag.IsZero() || withdrawn.IsZero() {
		t.Fatalf("the route was never tagged (%v) or never withdrawn (%v)", firstTag, withdrawn)
	}
	if untaggedAfterTag != 0 || back != 0 {
		t.Fatalf("GRACEFUL_SHUTDOWN dropped: %d untagged readings during the drain, %d with the route back after its withdrawal", untaggedAfterTag, back)
	}
	if held < 1500*time.Millisecond {
		t.Fatalf("the tagged route was held %v of a 2 s drain", held)
	}
	lc.nodes[0].mustCLI(t, "node", "undrain")
	waitHops(t, lc.lab.Router, b, "10.77.1.100", 3, 10*time.Second)
	if _, tagged := birdRoute(t, b, "lb1"); tagged {
		t.Fatal("the route is still tagged GRACEFUL_SHUTDOWN after undrain")
	}
}
