package e2e

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

var (
	soakFor  = flag.Duration("soak", 20*time.Second, "how long TestSoak injects faults (sudo make soak: 10m; CI: 2m)")
	soakSeed = flag.Uint64("soak.seed", 0, "TestSoak's fault schedule (0: from the clock; the seed is printed)")
)

const (
	vipHTTP = "10.77.1.100:80/tcp"
	// soakDetect bounds a dead backend's last request: fall (2) ×
	// interval (100 ms) + timeout (100 ms) of fastCheck, and 700 ms to
	// apply the verdict on two busy cores.
	soakDetect = time.Second
	// soakDual bounds how long both nodes may say master: the
	// master-down interval (3 × 100 ms advert + skew) and two samples.
	soakDual = 600 * time.Millisecond
)

// window is a fault's span, from injection until the pair is whole again.
type window struct {
	kind     string
	from, to time.Time // to is zero while the fault lasts
}

// soak is the state of one TestSoak run: what is expected of the pair,
// which backends are or were faulted, and what went wrong.
type soak struct {
	t   *testing.T
	lp  *lbPair
	rng *rand.Rand

	b4In    bool            // b4 is in vipTCP and vipHTTP
	drained map[string]bool // backend address → drained on vipTCP

	mu         sync.Mutex
	windows    []window
	faulted    map[string][]window // backend name → its dead spans
	kinds      map[string]int
	reach      time.Duration // the longest a dead backend still got traffic
	violations []string
}

func (s *soak) failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.violations) > 0
}

func (s *soak) violate(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := fmt.Sprintf("%s: ", time.Now().Format("15:04:05.000")) + fmt.Sprintf(format, args...)
	s.violations = append(s.violations, msg)
}

// open starts a fault window of kind; the returned func ends it.
func (s *soak) open(kind string) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kinds[kind]++
	i := len(s.windows)
	s.windows = append(s.windows, window{kind: kind, from: time.Now()})
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.windows[i].to = time.Now()
	}
}

// dead starts a span in which backend is taken away (killed, blackholed,
// deleted); the returned func ends it.
func (s *soak) dead(backend, why string) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := len(s.faulted[backend])
	s.faulted[backend] = append(s.faulted[backend], window{kind: why, from: time.Now()})
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.faulted[backend][i].to = time.Now()
	}
}

// excused says whether a connection to backend, open since opened and
// broken at broke, met a fault of its backend in between.
func (s *soak) excused(backend string, opened, broke time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.faulted[backend] {
		if !w.from.After(broke) && (w.to.IsZero() || !w.to.Before(opened)) {
			return true
		}
	}
	return false
}

// inside says whether [from, to] meets a fault window (or the detection
// bound after one).
func (s *soak) inside(from, to time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.windows {
		end := w.to
		if end.IsZero() {
			end = to
		}
		if !w.from.After(to) && !end.Add(soakDetect).Before(from) {
			return true
		}
	}
	return false
}

// expected is each VIP's backends as the soak's changes left them,
// "addr state" sorted, as signature prints a status.
func (s *soak) expected() string {
	var out []string
	for _, vip := range []string{vipHTTP, vipTCP, vipUDP} {
		var bs []string
		for _, b := range s.lp.lab.Backends {
			addr := b.Addr.Addr().String()
			switch {
			case b.Name == "b4" && (vip == vipUDP || !s.b4In):
			case vip == vipTCP && s.drained[addr]:
				bs = append(bs, addr+" draining")
			default:
				bs = append(bs, addr+" up")
			}
		}
		sort.Strings(bs)
		out = append(out, vip+": "+strings.Join(bs, ", "))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// signature prints a status as expected does: usable backends as "up",
// drained ones as "draining", anything else by its state.
func signature(st api.Status) string {
	var out []string
	for _, v := range st.VIPs {
		var bs []string
		for _, b := range v.Backends {
			state := b.State
			if state == "up" && !b.Usable {
				state = "unusable"
			}
			bs = append(bs, b.Addr+" "+state)
		}
		sort.Strings(bs)
		out = append(out, v.VIP+": "+strings.Join(bs, ", "))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// TestSoak: the LB pair under wrk, 200 long-lived connections and a
// random fault every 1–3 s (see soakFaults), for -soak (20 s in `make
// test`, 10 minutes in `sudo make soak`, 2 in CI). Invariants, checked
// all the time: no request reaches a backend more than soakDetect after
// it died; no long-lived connection to a healthy backend breaks; both
// nodes are never master for longer than soakDual; the daemons' RSS and
// goroutines stay bounded; no request fails outside a fault window; and
// the final state is the expected one, on both nodes.
func TestSoak(t *testing.T) {
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("soak for %v, seed %d (rerun with -soak.seed %d)", *soakFor, seed, seed)
	var s *soak
	// Registered first, so it runs last: the violations end the output,
	// after the daemons' logs, where a truncated CI log still shows them.
	t.Cleanup(func() {
		if s != nil && s.failed() {
			t.Logf("soak seed %d: %d violations:\n%s", seed, len(s.violations), strings.Join(s.violations, "\n"))
		}
	})
	s = newSoak(t, seed)
	w := s.watch()
	faults := s.faults()
	end := time.Now().Add(*soakFor)
	for time.Now().Before(end) {
		s.pause()
		f := faults[s.rng.IntN(len(faults))]
		end := f.run()
		s.recover(f.kind)
		end()
		if s.failed() {
			break
		}
	}
	w.stop()
	w.bounded()
	s.recover("the soak")
	s.report(w)
	if s.failed() {
		t.Fatalf("%d violations:\n%s", len(s.violations), strings.Join(s.violations, "\n"))
	}
}

// pause waits 1–3 s between faults: the soak's schedule, not a
// synchronisation.
func (s *soak) pause() {
	time.Sleep(time.Second + time.Duration(s.rng.Int64N(int64(2*time.Second))))
}

func newSoak(t *testing.T, seed uint64) *soak {
	lp := newLBPair(t, "100ms", 4, 3)
	m := lp.nodes[0]
	m.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip")
	for _, b := range lp.lab.Backends[:3] {
		m.mustCLI(t, append([]string{"backend", "add", vipHTTP, b.Addr.Addr().String()}, fastCheck...)...)
	}
	s := &soak{t: t, lp: lp, rng: rand.New(rand.NewPCG(seed, seed^0x50a4)), drained: map[string]bool{},
		faulted: map[string][]window{}, kinds: map[string]int{}}
	for _, n := range lp.nodes {
		n.waitStatus(t, "every backend up on both nodes", func(st api.Status) bool { return signature(st) == s.expected() })
	}
	lp.sameRings(t)
	for _, b := range lp.lab.Backends {
		countVIPPackets(t, b)
	}
	return s
}
