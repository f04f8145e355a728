// Package metrics is the daemon's Prometheus registry: the series it
// counts as things happen (probes, verdict to maps, transitions, weight
// answers), those it reads off the state and the data plane at scrape
// time, and the /metrics, /healthz and /readyz endpoints.
package metrics

import (
	"net/http"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/availability"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
)

// Source is what a scrape reads: the status (state, health, rings and
// counters), availability and the data plane's own counters.
type Source interface {
	Status() (api.Status, error)
	Availability() (api.AvailabilityReport, error)
	Stats() (map[loader.Stat]loader.Counter, error)
	FlowCount() (int, error)
}

// Metrics is the registry.
type Metrics struct {
	src           Source
	ready         func() bool
	avail         availability.Cache
	reg           *prometheus.Registry
	probeDuration *prometheus.HistogramVec
	failoverApply prometheus.Histogram
	checkFailures *prometheus.CounterVec
	transitions   *prometheus.CounterVec
	buildInfo     *prometheus.GaugeVec
	weightProbes  *prometheus.CounterVec
}

var (
	descVIPPackets     = prometheus.NewDesc("sluice_vip_packets_total", "Packets that matched a VIP.", []string{"vip"}, nil)
	descVIPBytes       = prometheus.NewDesc("sluice_vip_bytes_total", "Bytes that matched a VIP.", []string{"vip"}, nil)
	descBackendPackets = prometheus.NewDesc("sluice_backend_packets_total", "Packets sent to a backend.", []string{"vip", "backend"}, nil)
	descBackendBytes   = prometheus.NewDesc("sluice_backend_bytes_total", "Bytes sent to a backend.", []string{"vip", "backend"}, nil)
	descBackendUp      = prometheus.NewDesc("sluice_backend_up", "1 when the backend may receive traffic.", []string{"vip", "backend"}, nil)
	descBackendState   = prometheus.NewDesc("sluice_backend_state", "The backend's state, one-hot.", []string{"vip", "backend", "state"}, nil)
	descLastChange     = prometheus.NewDesc("sluice_backend_last_change_timestamp_seconds", "When the backend's health last changed.", []string{"vip", "backend"}, nil)
	descXDP            = prometheus.NewDesc("sluice_xdp_packets_total", "Packets by data-plane outcome or event.", []string{"outcome"}, nil)
	descConntrack      = prometheus.NewDesc("sluice_conntrack_entries", "Entries in the connection tables.", nil, nil)
	descRevision       = prometheus.NewDesc("sluice_state_revision", "Revision of the applied desired state.", nil, nil)
	descEpoch          = prometheus.NewDesc("sluice_vip_epoch", "Promotion epoch of a failover VIP.", []string{"vip"}, nil)
	descPrimary        = prometheus.NewDesc("sluice_vip_primary", "1 for the primary of a failover VIP.", []string{"vip", "backend"}, nil)
	descAvailability   = prometheus.NewDesc("sluice_vip_availability_ratio", "Measured share of time the VIP was available, by window.", []string{"vip", "window"}, nil)
	descHasPrimary     = prometheus.NewDesc("sluice_vip_has_primary", "1 while a failover VIP has a primary.", []string{"vip"}, nil)
	descVIPUsable      = prometheus.NewDesc("sluice_vip_usable_backends", "Backends of the VIP the data plane may send traffic to.", []string{"vip"}, nil)
	descVIPMinActive   = prometheus.NewDesc("sluice_vip_min_active", "The VIP's min_active: usable actives below it bring in standbys.", []string{"vip"}, nil)
	descRingRebuilds   = prometheus.NewDesc("sluice_ring_rebuilds_total", "Ring swaps of the VIP (failures, changes and reweights).", []string{"vip"}, nil)
	descEffWeight      = prometheus.NewDesc("sluice_backend_effective_weight", "The weight the ring gives the backend: configured, scaled by agent, load and slow start; 0 while it takes no new flows.", []string{"vip", "backend"}, nil)
)

// New reads src at scrape time; ready says whether the daemon answers
// /readyz.
func New(src Source, ready func() bool) *Metrics {
	m := &Metrics{src: src, ready: ready, reg: prometheus.NewRegistry()}
	m.probeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sluice_health_check_duration_seconds", Help: "Duration of health probes.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"type"})
	m.failoverApply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sluice_failover_apply_seconds", Help: "Time from a health verdict to the completed map update.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})
	m.checkFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_backend_check_failures_total", Help: "Failed health probes.",
	}, []string{"vip", "backend"})
	m.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_backend_transitions_total", Help: "Health transitions by new state.",
	}, []string{"vip", "backend", "to"})
	m.buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_build_info", Help: "Build information.",
	}, []string{"version", "goversion"})
	version, gover := "dev", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		gover = bi.GoVersion
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
	}
	m.buildInfo.WithLabelValues(version, gover).Set(1)
	m.weightProbes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_backend_weight_probes_total", Help: "Agent answers and load scrapes, by probe (agent, load) and result (ok, malformed: refused, failed).",
	}, []string{"vip", "backend", "probe", "result"})
	m.reg.MustRegister(m.probeDuration, m.failoverApply, m.checkFailures, m.transitions, m.buildInfo, m.weightProbes, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds collectors (the topology's, the routes', failover's).
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Seen exports a backend's failure counter at 0 before its first failure.
func (m *Metrics) Seen(vip, backend string) { m.checkFailures.WithLabelValues(vip, backend) }

// Probed times a probe; a failed one counts for each of backends, the
// VIP/backend pairs its check speaks for.
func (m *Metrics) Probed(r health.Result, backends [][2]string) {
	m.probeDuration.WithLabelValues(string(r.Type)).Observe(r.Duration.Seconds())
	if r.Err == nil {
		return
	}
	for _, b := range backends {
		m.checkFailures.WithLabelValues(b[0], b[1]).Inc()
	}
}

// Applied times a health verdict's way into the maps.
func (m *Metrics) Applied(d time.Duration) { m.failoverApply.Observe(d.Seconds()) }

// WeightAnswer counts an agent answer or a load scrape.
func (m *Metrics) WeightAnswer(k weight.Key, probe, result string) {
	m.weightProbes.WithLabelValues(k.VIP, k.Addr, probe, result).Inc()
}

// Transition counts a backend's health transition.
func (m *Metrics) Transition(vip, backend, to string) {
	m.transitions.WithLabelValues(vip, backend, to).Inc()
}

// Describe implements prometheus.Collector (unchecked: series vary).
func (m *Metrics) Describe(chan<- *prometheus.Desc) {}

// Collect reads the per-CPU counters from the maps at scrape time.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	st, err := m.src.Status()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(st.Revision))
	for _, v := range st.VIPs {
		if v.Policy == state.PolicyFailover {
			ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(v.Epoch), v.VIP)
			has := 0.0
			if v.Primary != "" {
				has = 1
				ch <- prometheus.MustNewConstMetric(descPrimary, prometheus.GaugeValue, 1, v.VIP, v.Primary)
			}
			ch <- prometheus.MustNewConstMetric(descHasPrimary, prometheus.GaugeValue, has, v.VIP)
		}
		usable := 0
		for _, b := range v.Backends {
			if b.Usable {
				usable++
			}
		}
		ch <- prometheus.MustNewConstMetric(descVIPUsable, prometheus.GaugeValue, float64(usable), v.VIP)
		ch <- prometheus.MustNewConstMetric(descVIPMinActive, prometheus.GaugeValue, float64(v.MinActive), v.VIP)
		ch <- prometheus.MustNewConstMetric(descRingRebuilds, prometheus.CounterValue, float64(v.RingRebuilds), v.VIP)
		ch <- prometheus.MustNewConstMetric(descVIPPackets, prometheus.CounterValue, float64(v.Packets), v.VIP)
		ch <- prometheus.MustNewConstMetric(descVIPBytes, prometheus.CounterValue, float64(v.Bytes), v.VIP)
		for _, b := range v.Backends {
			ch <- prometheus.MustNewConstMetric(descBackendPackets, prometheus.CounterValue, float64(b.Packets), v.VIP, b.Addr)
			ch <- prometheus.MustNewConstMetric(descBackendBytes, prometheus.CounterValue, float64(b.Bytes), v.VIP, b.Addr)
			up := 0.0
			if b.Usable {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descBackendUp, prometheus.GaugeValue, up, v.VIP, b.Addr)
			ch <- prometheus.MustNewConstMetric(descEffWeight, prometheus.GaugeValue, b.EffectiveWeight, v.VIP, b.Addr)
			for _, s := range api.BackendStates {
				val := 0.0
				if b.State == s {
					val = 1
				}
				ch <- prometheus.MustNewConstMetric(descBackendState, prometheus.GaugeValue, val, v.VIP, b.Addr, s)
			}
			if !b.LastChange.IsZero() {
				ch <- prometheus.MustNewConstMetric(descLastChange, prometheus.GaugeValue, float64(b.LastChange.UnixNano())/1e9, v.VIP, b.Addr)
			}
		}
	}
	if stats, err := m.src.Stats(); err == nil {
		for s, c := range stats {
			ch <- prometheus.MustNewConstMetric(descXDP, prometheus.CounterValue, float64(c.Packets), s.String())
		}
	}
	if rep, err := m.avail.Get(m.src.Availability); err == nil {
		for _, v := range rep.VIPs {
			for w, a := range v.Measured {
				ch <- prometheus.MustNewConstMetric(descAvailability, prometheus.GaugeValue, a, v.VIP, w)
			}
		}
	}
	if n, err := m.src.FlowCount(); err == nil {
		ch <- prometheus.MustNewConstMetric(descConntrack, prometheus.GaugeValue, float64(n))
	}
}

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !m.ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}
