package cluster

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/api"
)

// Status is the cluster as this node sees it: the live nodes' reports
// from etcd, the coordinator, and whether etcd answers.
func (c *Node) Status(ctx context.Context) api.ClusterStatus {
	out := api.ClusterStatus{Store: "etcd", Cluster: c.opts.Cluster, Revision: c.seen.Load(), Quorum: string(c.opts.Quorum),
		StoreUp: c.downSince.Load() == 0}
	if !out.StoreUp {
		out.StoreDownSince = time.Unix(0, c.downSince.Load()).UTC().Format(time.RFC3339)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if name, err := c.member.Coordinator(sctx); err == nil {
		out.Coordinator = name
	}
	out.Nodes = c.member.Nodes()
	if r := c.refusal.Load(); r != nil {
		out.StateRefused = *r
	}
	return out
}

var (
	descNodes    = prometheus.NewDesc("sluice_cluster_nodes", "Live nodes of the cluster (node keys in etcd).", nil, nil)
	descApplied  = prometheus.NewDesc("sluice_cluster_applied_revision", "The state revision each live node applied, as it published.", []string{"node"}, nil)
	descMismatch = prometheus.NewDesc("sluice_cluster_ring_mismatch", "1 while live nodes that applied the same revision publish different ring digests for the VIP.", []string{"vip"}, nil)
	descStoreUp  = prometheus.NewDesc("sluice_store_up", "1 while etcd answers this node.", nil, nil)
	descCoord    = prometheus.NewDesc("sluice_coordinator", "1 while this node is the cluster's coordinator.", nil, nil)
	descRefused  = prometheus.NewDesc("sluice_cluster_state_refused", "1 while the newest state in etcd is refused as invalid (this node forwards the last good one).", nil, nil)
	descRefusals = prometheus.NewDesc("sluice_cluster_states_refused_total", "States in etcd this node refused as invalid.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Node) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descApplied, descMismatch, descStoreUp, descCoord, descRefused, descRefusals} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Node) Collect(ch chan<- prometheus.Metric) {
	nodes := c.member.Nodes()
	ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(len(nodes)))
	for _, n := range nodes {
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(n.AppliedRevision), n.Name)
	}
	for vip, bad := range RingMismatch(nodes) {
		v := 0.0
		if bad {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descMismatch, prometheus.GaugeValue, v, vip)
	}
	ch <- prometheus.MustNewConstMetric(descStoreUp, prometheus.GaugeValue, b2f(c.downSince.Load() == 0))
	ch <- prometheus.MustNewConstMetric(descCoord, prometheus.GaugeValue, b2f(c.member.IsCoordinator()))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.GaugeValue, b2f(c.refusal.Load() != nil))
	ch <- prometheus.MustNewConstMetric(descRefusals, prometheus.CounterValue, float64(c.refusedTotal.Load()))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// RingMismatch says, per VIP, whether nodes that applied the same
// revision publish different ring digests (nodes still applying a newer
// or older revision are not compared with each other).
func RingMismatch(nodes []Report) map[string]bool {
	out := map[string]bool{}
	seen := map[uint64]map[string]string{} // revision → VIP → digest
	for _, n := range nodes {
		byVIP := seen[n.AppliedRevision]
		if byVIP == nil {
			byVIP = map[string]string{}
			seen[n.AppliedRevision] = byVIP
		}
		for vip, d := range n.RingSHA256 {
			if prev, ok := byVIP[vip]; ok && prev != d {
				out[vip] = true
			} else if !ok {
				byVIP[vip] = d
			}
			if _, ok := out[vip]; !ok {
				out[vip] = false
			}
		}
	}
	return out
}
