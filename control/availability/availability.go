// Package availability turns the availability timeline into figures:
// the measured share of time each VIP and backend was available, per
// window, and the k-of-n model of a VIP from its backends' figures.
package availability

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// Windows over which availability is reported; 0 means since first seen.
var Windows = []struct {
	Name string
	Dur  time.Duration
}{{"1h", time.Hour}, {"24h", 24 * time.Hour}, {"30d", 30 * 24 * time.Hour}, {"all", 0}}

// Subject names one timeline: a backend of a VIP, or the VIP itself when Backend is empty.
type Subject struct{ VIP, Backend string }

// MeasuredAvailability is the share of [max(now-window, first seen), now]
// during which the subject was available, from its ordered transitions.
// The subject is unavailable before its first event; it stays in the state
// of its last event until now.
func MeasuredAvailability(events []state.TimelineEvent, now time.Time, window time.Duration) (float64, bool) {
	if len(events) == 0 {
		return 0, false
	}
	start := events[0].Time
	if window > 0 && now.Add(-window).After(start) {
		start = now.Add(-window)
	}
	total := now.Sub(start)
	if total <= 0 {
		if events[len(events)-1].Available {
			return 1, true
		}
		return 0, true
	}
	var up time.Duration
	for i, e := range events {
		from := e.Time
		to := now
		if i+1 < len(events) {
			to = events[i+1].Time
		}
		if to.Before(start) || !e.Available {
			continue
		}
		if from.Before(start) {
			from = start
		}
		if to.After(from) {
			up += to.Sub(from)
		}
	}
	return float64(up) / float64(total), true
}

// AtLeastK is the probability that at least k of n independent
// components are up, component i with probability ps[i] (the
// Poisson-binomial tail): a VIP that needs k usable backends out of n. A
// plain product of the A_i would model a chain of components that must all
// work, which a load-balanced VIP is not.
func AtLeastK(ps []float64, k int) float64 {
	if k <= 0 {
		return 1
	}
	if k > len(ps) {
		return 0
	}
	// dist[j] = P(exactly j up among the components seen so far)
	dist := make([]float64, len(ps)+1)
	dist[0] = 1
	for i, p := range ps {
		for j := i + 1; j >= 1; j-- {
			dist[j] = dist[j]*(1-p) + dist[j-1]*p
		}
		dist[0] *= 1 - p
	}
	sum := 0.0
	for j := k; j <= len(ps); j++ {
		sum += dist[j]
	}
	return math.Min(1, sum)
}

// Nines turns an availability into "nines": 0.999 -> 3.
func Nines(a float64) float64 {
	if a >= 1 {
		return math.Inf(1)
	}
	if a <= 0 {
		return 0
	}
	return -math.Log10(1 - a)
}

// Build computes the report from a timeline.
func Build(s state.State, timeline []state.TimelineEvent, now time.Time) api.AvailabilityReport {
	by := map[Subject][]state.TimelineEvent{}
	for _, e := range timeline {
		k := Subject{e.VIP, e.Backend}
		by[k] = append(by[k], e)
	}
	for k := range by {
		sort.SliceStable(by[k], func(i, j int) bool { return by[k][i].Time.Before(by[k][j].Time) })
	}
	rep := api.AvailabilityReport{VIPs: []api.VIPAvailability{}}
	for _, v := range s.VIPs {
		va := api.VIPAvailability{VIP: v.VIP, Of: len(v.Backends), Need: v.MinActive,
			Measured: map[string]float64{}, Modelled: map[string]float64{}}
		if v.Policy == state.PolicyFailover {
			va.Need = 1 // any replica can be promoted
		}
		for _, w := range Windows {
			if a, ok := MeasuredAvailability(by[Subject{v.VIP, ""}], now, w.Dur); ok {
				va.Measured[w.Name] = a
			}
		}
		per := map[string][]float64{}
		for _, b := range v.Backends {
			ba := api.BackendAvailability{Addr: b.Addr, Measured: map[string]float64{}}
			for _, w := range Windows {
				a, ok := MeasuredAvailability(by[Subject{v.VIP, b.Addr}], now, w.Dur)
				if ok {
					ba.Measured[w.Name] = a
				}
				per[w.Name] = append(per[w.Name], a)
			}
			va.Backends = append(va.Backends, ba)
		}
		for _, w := range Windows {
			va.Modelled[w.Name] = AtLeastK(per[w.Name], va.Need)
		}
		rep.VIPs = append(rep.VIPs, va)
	}
	return rep
}

// CacheFor is how long a Cache keeps a report: a scrape recomputes the
// ratios at most this often, and scrapes in between get the last figures.
const CacheFor = 10 * time.Second

// Cache keeps the last availability report for metric scrapes.
type Cache struct {
	mu  sync.Mutex
	at  time.Time
	rep api.AvailabilityReport
}

// Get returns the kept report, or a new one from build once the kept one
// is older than CacheFor.
func (c *Cache) Get(build func() (api.AvailabilityReport, error)) (api.AvailabilityReport, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < CacheFor {
		return c.rep, nil
	}
	rep, err := build()
	if err != nil {
		return rep, err
	}
	c.rep, c.at = rep, time.Now()
	return rep, nil
}
