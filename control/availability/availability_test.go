package availability

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/state"
	"pgregory.net/rapid"
)

// TestMeasuredAvailabilityExact: a synthetic timeline whose availability
// is known exactly.
func TestMeasuredAvailabilityExact(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := func(min int, up bool) state.TimelineEvent {
		return state.TimelineEvent{Time: t0.Add(time.Duration(min) * time.Minute), VIP: "v", Backend: "b", Available: up}
	}
	// up 0-50, down 50-60, up 60-120 (now): since first seen 110/120.
	tl := []state.TimelineEvent{ev(0, true), ev(50, false), ev(60, true)}
	now := t0.Add(120 * time.Minute)
	cases := []struct {
		window time.Duration
		want   float64
	}{
		{0, 110.0 / 120},
		{time.Hour, 1},                // 60-120: all up
		{90 * time.Minute, 80.0 / 90}, // 30-120: down 50-60
		{24 * time.Hour, 110.0 / 120}, // clipped to first seen
		{65 * time.Minute, 60.0 / 65}, // 55-120: down 55-60
	}
	for _, c := range cases {
		got, ok := MeasuredAvailability(tl, now, c.window)
		if !ok || math.Abs(got-c.want) > 1e-12 {
			t.Errorf("window %v: %v, want %v", c.window, got, c.want)
		}
	}
	if _, ok := MeasuredAvailability(nil, now, 0); ok {
		t.Error("an empty timeline has a figure")
	}
	if got := Nines(0.999); math.Abs(got-3) > 1e-9 {
		t.Errorf("Nines(0.999) = %v", got)
	}
}

// TestAtLeastKMatchesBruteForce: the k-of-n model against enumerating
// every up/down combination.
func TestAtLeastKMatchesBruteForce(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 10).Draw(t, "n")
		ps := make([]float64, n)
		for i := range ps {
			ps[i] = rapid.Float64Range(0, 1).Draw(t, "p")
		}
		k := rapid.IntRange(0, n+1).Draw(t, "k")
		brute := 0.0
		for mask := 0; mask < 1<<n; mask++ {
			p, up := 1.0, 0
			for i := range n {
				if mask&(1<<i) != 0 {
					p *= ps[i]
					up++
				} else {
					p *= 1 - ps[i]
				}
			}
			if up >= k {
				brute += p
			}
		}
		if got := AtLeastK(ps, k); math.Abs(got-brute) > 1e-9 {
			t.Fatalf("AtLeastK(%v, %d) = %v, brute force %v", ps, k, got, brute)
		}
	})
}

func TestBuildAvailability(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := state.State{VIPs: []state.VIP{{VIP: "10.0.0.1:80/tcp", MinActive: 2, Policy: state.PolicyMaglev,
		Backends: []state.Backend{{Addr: "10.0.1.1"}, {Addr: "10.0.1.2"}, {Addr: "10.0.1.3"}}}}}
	var tl []state.TimelineEvent
	for i, b := range s.VIPs[0].Backends {
		tl = append(tl, state.TimelineEvent{Time: t0, VIP: s.VIPs[0].VIP, Backend: b.Addr, Available: true})
		if i == 0 { // b1 down for the second half
			tl = append(tl, state.TimelineEvent{Time: t0.Add(30 * time.Minute), VIP: s.VIPs[0].VIP, Backend: b.Addr, Available: false})
		}
	}
	tl = append(tl, state.TimelineEvent{Time: t0, VIP: s.VIPs[0].VIP, Available: true})
	rep := Build(s, tl, t0.Add(time.Hour))
	v := rep.VIPs[0]
	if v.Measured["all"] != 1 || v.Backends[0].Measured["all"] != 0.5 {
		t.Fatalf("measured %+v", v)
	}
	// 2 of {0.5, 1, 1}: always at least 2 up.
	if v.Modelled["all"] != 1 {
		t.Fatalf("modelled %v", v.Modelled["all"])
	}
}

// BenchmarkScrapeAfterFlaps: what a scrape costs (the timeline read from
// the store's memory and the report built) after a backend flapped N
// times, with the store's default bound. Past the bound the cost stops
// growing: compare flaps=100000 and flaps=1000000 in the same run.
func BenchmarkScrapeAfterFlaps(b *testing.B) {
	st := state.State{VIPs: []state.VIP{{VIP: "10.0.0.1:80/tcp", MinActive: 1, Backends: []state.Backend{{Addr: "10.0.1.1"}, {Addr: "10.0.1.2"}}}}}
	for _, flaps := range []int{1_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("flaps=%d", flaps), func(b *testing.B) {
			store, err := state.OpenBoltStore(b.TempDir(), 3)
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			t0 := time.Now().Add(-time.Hour)
			for i := range flaps {
				at := t0.Add(time.Duration(i) * time.Hour / time.Duration(flaps))
				store.AppendTimeline([]state.TimelineEvent{{Time: at, VIP: "10.0.0.1:80/tcp", Backend: "10.0.1.1", Available: i%2 == 0}})
			}
			b.ResetTimer()
			for b.Loop() {
				tl, _ := store.Timeline()
				Build(st, tl, time.Now())
			}
		})
	}
}
