package netlab

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/maglev"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/testutil"
)

const e2eConns = 300

// lbForVIP attaches the load balancer in the lab's LB namespace and
// configures one TCP VIP over all backends with a Maglev ring.
func lbForVIP(t *testing.T, lab *Lab, fwd loader.Forward, seed uint32) (*loader.Datapath, loader.VIPKey) {
	t.Helper()
	ctx := context.Background()
	d, err := lab.LB.AttachLB(ctx, loader.Options{Mode: loader.ModeNative, FlowTableSize: 65536})
	if err != nil {
		t.Fatal(err)
	}
	lab.OnClose(d.Close)
	if _, err := d.SetConfig(loader.Config{Seed: seed, MAC: lab.LB.MAC}); err != nil {
		t.Fatal(err)
	}
	vip := loader.VIPKey{Addr: LabVIP4, Port: LabEchoPort, Proto: loader.TCP}
	if _, err := d.SetVIP(vip, loader.VIP{ID: 0, Forward: fwd}); err != nil {
		t.Fatal(err)
	}
	var mb []maglev.Backend
	for i, b := range lab.Backends {
		if _, err := d.SetBackend(uint32(i+1), loader.Backend{Addr: b.Addr.Addr(), VIPID: 0, Flags: loader.BackendUsable, MAC: b.MAC}); err != nil {
			t.Fatal(err)
		}
		mb = append(mb, maglev.Backend{ID: b.Addr.Addr().String(), Weight: 1, Slot: uint32(i + 1)})
	}
	ring, err := maglev.Build(mb, 65537, uint64(seed))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReplaceRing(vip, ring); err != nil {
		t.Fatal(err)
	}
	return d, vip
}

// connectAll opens e2eConns connections from fixed client ports and returns
// the backend that greeted each.
func connectAll(t *testing.T, lab *Lab) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := make([]string, e2eConns)
	for i := range out {
		laddr := fmt.Sprintf("%s:%d", lab.Client.Addr.Addr(), 20000+i)
		c, err := lab.Client.Dial(ctx, "tcp4", laddr, netip.AddrPortFrom(LabVIP4, LabEchoPort).String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		name, err := Greeting(c)
		c.Close()
		if err != nil {
			t.Fatalf("connection %d: greeting: %v", i, err)
		}
		out[i] = name
	}
	return out
}

func TestEndToEndSpreadAndDeterminism(t *testing.T) {
	testutil.Require(t)
	for _, fwd := range []loader.Forward{loader.ForwardIPIP, loader.ForwardGUE, loader.ForwardDSR} {
		t.Run(fwd.String(), func(t *testing.T) {
			var runs [2][]string
			for r := range runs {
				lab, err := NewLab(context.Background(), nil, LabOptions{})
				if err != nil {
					t.Fatal(err)
				}
				d, _ := lbForVIP(t, lab, fwd, 0xc0ffee)
				runs[r] = connectAll(t, lab)

				count := map[string]int{}
				for _, n := range runs[r] {
					count[n]++
				}
				for _, b := range lab.Backends {
					share := float64(count[b.Name]) / e2eConns
					t.Logf("run %d %s: %s took %d of %d (%.1f%%)", r+1, fwd, b.Name, count[b.Name], e2eConns, 100*share)
					if share < 0.20 || share > 0.47 {
						t.Errorf("%s took %.1f%%, want 20%%..47%%", b.Name, 100*share)
					}
				}
				stats, err := d.Stats()
				if err != nil {
					t.Fatal(err)
				}
				tx := stats[loader.StatTxIPIP].Packets + stats[loader.StatTxGUE].Packets + stats[loader.StatTxDSR].Packets
				if tx < 3*e2eConns {
					t.Errorf("the XDP program forwarded only %d packets for %d connections", tx, e2eConns)
				}
				if err := lab.Close(); err != nil {
					t.Errorf("close lab: %v", err)
				}
				if left := Leftovers(lab.ID()); len(left) > 0 {
					t.Errorf("left behind: %v", left)
				}
			}
			for i := range runs[0] {
				if runs[0][i] != runs[1][i] {
					t.Fatalf("connection %d went to %s, then to %s with the same seed", i, runs[0][i], runs[1][i])
				}
			}
		})
	}
}
