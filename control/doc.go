// Package control is the sluice daemon. Daemon builds its parts and runs
// them; core holds the desired state and the one path that applies it
// (commit through the topology, one view of the verdicts, the
// reconciler). The topology seam is a single node (here), an LB pair
// (control/pair) or a cluster node (control/cluster); the routes seam is
// BGP (control/bgp) or nothing. Promotions are control/failover's, the
// API control/apiserver's, metrics control/metrics'.
package control
