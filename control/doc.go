// Package control is the sluice daemon: it turns the desired state and
// the health checks' verdicts into the data plane's maps (the
// reconciler), promotes replicas of failover VIPs, runs drills, and
// serves the API on its unix socket and the Prometheus metrics. Its
// subpackages each do one job for it: state (the model and its store),
// api (the wire contract), maglev (the rings), pair and ha (the LB pair),
// availability (the figures), neigh (next-hop MACs) and weight (the
// effective weights: agent checks, load metrics, slow start).
package control
