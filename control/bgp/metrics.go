package bgp

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descPeerUp    = prometheus.NewDesc("sluice_bgp_peer_up", "1 while the BGP session with the router is established.", []string{"peer"}, nil)
	descBFDUp     = prometheus.NewDesc("sluice_bgp_bfd_up", "1 while the BFD session with the router is up (only with --bgp-bfd).", []string{"peer"}, nil)
	descAnnounced = prometheus.NewDesc("sluice_bgp_announced", "Routes (VIP addresses) this node announces.", nil, nil)
	descWithheld  = prometheus.NewDesc("sluice_bgp_withheld", "VIP addresses this node withholds, by reason.", []string{"reason"}, nil)
	descDraining  = prometheus.NewDesc("sluice_node_draining", "1 while this node is drained (sluice node drain, or shutting down).", nil, nil)
)

// Describe implements prometheus.Collector.
func (a *Announcer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeerUp, descBFDUp, descAnnounced, descWithheld, descDraining} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (a *Announcer) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if ps, err := a.Speaker.Peers(ctx); err == nil {
		for _, p := range ps {
			ch <- prometheus.MustNewConstMetric(descPeerUp, prometheus.GaugeValue, b2f(p.State == "established"), p.Addr)
			if a.Speaker.cfg.BFD {
				ch <- prometheus.MustNewConstMetric(descBFDUp, prometheus.GaugeValue, b2f(p.BFD == "up"), p.Addr)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descAnnounced, prometheus.GaugeValue, float64(len(a.Speaker.Announced())))
	held := map[string]int{}
	if d := a.last.Load(); d != nil {
		for _, why := range d.Withheld {
			held[why]++
		}
	}
	for _, r := range Reasons {
		ch <- prometheus.MustNewConstMetric(descWithheld, prometheus.GaugeValue, float64(held[r]), r)
	}
	ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, b2f(a.draining.Load()))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
