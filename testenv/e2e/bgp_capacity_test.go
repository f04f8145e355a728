package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// BenchmarkBGPCapacity: HTTP throughput from the client through the
// router with 1, 2 and 3 of the cluster's nodes announcing the VIP, side
// by side in one run, with each node's share of the VIP's packets and
// the XDP program's own cost per packet (kernel BPF stats). On this
// two-CPU machine client, router, nodes and backends share the CPUs, so
// the figures say how much of the work the LB nodes are, not how a
// deployment scales; docs/scale-out.md has the model.
//
//	go test -run '^$' -bench BGPCapacity -benchtime 1x ./testenv/e2e/
func BenchmarkBGPCapacity(b *testing.B) {
	lc, bird := newBGPCluster(b, 3, 3, false, "--bgp-learn", "500ms")
	serveHTTP(b, lc, bird)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF stats: %v", err)
	}
	defer stats.Close()
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for i, d := range lc.nodes {
				if i < n {
					d.mustCLI(b, "node", "undrain")
				} else {
					d.mustCLI(b, "node", "drain")
				}
			}
			waitHops(b, lc.lab.Router, bird, "10.77.1.100", n, 10*time.Second)
			before := xdpStats(b, lc)
			var requests int
			var elapsed time.Duration
			for range b.N {
				start := time.Now()
				requests += wrkCapacity(b, lc.lab.Client, 5*time.Second)
				elapsed += time.Since(start)
			}
			after := xdpStats(b, lc)
			var runs, runtime uint64
			shares := ""
			for i := range after {
				runs += after[i].RunCount - before[i].RunCount
				runtime += uint64(after[i].Runtime - before[i].Runtime)
			}
			for i := range after {
				shares += fmt.Sprintf(" node%d %.0f%%", i+1, 100*float64(after[i].RunCount-before[i].RunCount)/float64(max(runs, 1)))
			}
			b.ReportMetric(float64(requests)/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(runtime)/float64(max(runs, 1)), "xdp-ns/pkt")
			b.ReportMetric(float64(runtime)/float64(elapsed.Nanoseconds()), "xdp-cpus")
			b.Logf("%d nodes announcing: %.0f requests/s; XDP ran %d times, %.0f ns each, %.3f CPUs; packets per node:%s",
				n, float64(requests)/elapsed.Seconds(), runs, float64(runtime)/float64(max(runs, 1)), float64(runtime)/float64(elapsed.Nanoseconds()), shares)
		})
	}
}

// wrkCapacity runs wrk at full load (2 threads, 64 connections) for d
// and returns how many requests completed.
func wrkCapacity(b *testing.B, client *netlab.Host, d time.Duration) int {
	out, err := client.Command(context.Background(), "wrk", "-t2", "-c64", "-d"+d.String(), "--timeout", "2s",
		"http://"+netlab.LabVIP4.String()+"/").CombinedOutput()
	m := wrkRequests.FindSubmatch(out)
	if err != nil || m == nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	return atoi(m[1])
}

// xdpStats reads each node's attached XDP program's run count and time.
func xdpStats(b *testing.B, lc *labCluster) []*ebpf.ProgramStats {
	var out []*ebpf.ProgramStats
	for _, h := range lc.lab.Nodes {
		x := linkXDP(b, h)
		if x == nil || x.ProgId == 0 {
			b.Fatalf("%s: no XDP program", h.Name)
		}
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId))
		if err != nil {
			b.Fatal(err)
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, st)
	}
	return out
}
