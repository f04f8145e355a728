package loader

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/pin"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestEveryProgramLoads loads each embedded object whole, every program
// through the verifier of the running kernel (make test-kernel runs it on
// Linux 6.1): the daemon's, the backends' decap, and the test tools and
// floor programs the benchmarks use.
func TestEveryProgramLoads(t *testing.T) {
	testutil.Require(t)
	for _, obj := range []struct {
		name  string
		load  func() (*ebpf.CollectionSpec, error)
		progs int
	}{
		{"lb", bpf.LoadLb, 2}, {"decap", bpf.LoadDecap, 1}, {"tools", bpf.LoadTools, 4}, {"floor", bpf.LoadFloor, 3},
	} {
		t.Run(obj.name, func(t *testing.T) {
			spec, err := obj.load()
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range spec.Maps {
				if m.Type == ebpf.LRUHash && m.MaxEntries > 4096 {
					m.MaxEntries = 4096 // a million entries each is the daemon's default, not the verifier's concern
				}
			}
			coll, err := ebpf.NewCollection(spec)
			if err != nil {
				t.Fatal(pin.ExplainLoadError(err, ""))
			}
			defer coll.Close()
			if len(coll.Programs) != obj.progs {
				t.Fatalf("%d programs, want %d", len(coll.Programs), obj.progs)
			}
			for name, p := range coll.Programs {
				info, err := p.Info()
				if err != nil {
					t.Fatal(err)
				}
				if n, _ := info.VerifiedInstructions(); n == 0 {
					t.Logf("%s: loaded (verified instruction count not reported by this kernel)", name)
				} else {
					t.Logf("%s: loaded, %d instructions verified", name, n)
				}
			}
		})
	}
}
