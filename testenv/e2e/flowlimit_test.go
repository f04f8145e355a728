package e2e

import (
	"context"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// TestNewFlowLimitFlag: --new-flow-limit reaches the data plane. At 1 new
// table entry per CPU per second, 50 new UDP flows within a second are
// steered by the ring with about one entry per CPU (ct_flood_skip
// counts the rest), and every query is still answered; at the default
// none is skipped. A limit the data plane cannot hold is refused.
func TestNewFlowLimitFlag(t *testing.T) {
	for _, c := range []struct {
		args     []string
		skipped  func(float64) bool
		describe string
	}{
		// One entry per CPU per second; the 50 flows may straddle a second
		// or two.
		{[]string{"--new-flow-limit", "1"}, func(n float64) bool { return n >= float64(50-3*runtime.NumCPU()) }, "all but a few of 50"},
		{nil, func(n float64) bool { return n == 0 }, "none"},
	} {
		lab := newLab(t, netlab.LabOptions{Backends: 1})
		d := startDaemon(t, lab, "", c.args...)
		d.mustCLI(t, "vip", "add", vipUDP, "--forward", "dsr")
		d.mustCLI(t, "backend", "add", vipUDP, lab.Backends[0].Addr.Addr().String(), "--check", "udp", "--interval", "100ms", "--timeout", "100ms", "--rise", "1")
		d.waitStatus(t, "up", allUp(1))
		sc := newScraper(lab.LB)
		before := sc.value(t, "sluice_xdp_packets_total", `outcome="ct_flood_skip"`)
		buf := make([]byte, 64)
		for i := range 50 { // a new source port, so a new flow, each
			conn, err := lab.Client.Dial(context.Background(), "udp4", "", "10.77.1.100:53")
			if err != nil {
				t.Fatal(err)
			}
			conn.Write([]byte("q"))
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Read(buf); err != nil {
				t.Fatalf("%v: query %d: %v", c.args, i, err)
			}
			conn.Close()
		}
		skipped := sc.value(t, "sluice_xdp_packets_total", `outcome="ct_flood_skip"`) - before
		t.Logf("%v: %v of 50 new flows steered without a table entry", c.args, skipped)
		if !c.skipped(skipped) {
			t.Errorf("%v: %v new flows skipped the table, want %s", c.args, skipped, c.describe)
		}
		d.stop()
		lab.Close()
	}
	out, err := exec.Command(sluiceBin, "daemon", "--iface", "lo", "--new-flow-limit", "4294967295").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--new-flow-limit 4294967295") {
		t.Fatalf("an impossible limit: %v %s", err, out)
	}
}
