package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/control/cluster"
	"github.com/sluicelb/sluice/control/etcdstore"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/weight"
	"github.com/sluicelb/sluice/loader"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the data plane, health checks, reconciler, API and metrics",
		Flags: daemonFlags(),
		Action: func(c *cli.Context) error {
			mode, err := loader.ParseMode(c.String("xdp-mode"))
			if err != nil {
				return fmt.Errorf("--xdp-mode: %w", err)
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
			}
			if c.Uint64("flow-table-size") == 0 || c.Uint64("flow-table-size") > 1<<28 {
				return fmt.Errorf("--flow-table-size %d: want 1 to %d", c.Uint64("flow-table-size"), 1<<28)
			}
			limit := c.Uint64("new-flow-limit")
			if limit >= uint64(loader.NoNewFlowLimit) {
				return fmt.Errorf("--new-flow-limit %d: at most %d (0 turns the guard off)", limit, loader.NoNewFlowLimit-1)
			}
			if limit == 0 {
				limit = uint64(loader.NoNewFlowLimit)
			}
			if c.Duration("availability-retention") <= 0 {
				return fmt.Errorf("--availability-retention %v: must be positive", c.Duration("availability-retention"))
			}
			if c.Int("availability-max-events") < 1 {
				return fmt.Errorf("--availability-max-events %d: must be at least 1", c.Int("availability-max-events"))
			}
			haOpts, err := haOptions(c)
			if err != nil {
				return err
			}
			clusterOpts, err := clusterOptions(c)
			if err != nil {
				return err
			}
			bgpOpts, err := bgpOptions(c)
			if err != nil {
				return err
			}
			flowOpts, err := flowSyncOptions(c)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			d, err := control.New(c.Context, control.Options{
				Iface: c.String("iface"), Mode: mode, StateDir: c.String("state-dir"), Socket: c.String("socket"),
				MetricsAddr: c.String("metrics-addr"), Seed: c.Uint64("seed"), ArchiveKeep: c.Int("archive-keep"),
				FlowTableSize: uint32(c.Uint64("flow-table-size")), PinRoot: c.String("pin-root"), Logger: log, HA: haOpts, Cluster: clusterOpts, BGP: bgpOpts, FlowSync: flowOpts,
				HookUser: c.String("hook-user"), VIPOpen: c.Bool("vip-open"), VIPNoEcho: c.Bool("vip-no-echo"),
				NewFlowLimit: uint32(limit), ReweightInterval: c.Duration("reweight-interval"), ReweightThreshold: c.Float64("reweight-threshold") / 100,
				Timeline: state.TimelineLimits{Retention: c.Duration("availability-retention"), MaxEvents: c.Int("availability-max-events")},
			})
			if err != nil {
				return err
			}
			return d.Run(c.Context)
		},
	}
}

// daemonFlags are the daemon's flags: the node, the LB pair (--ha-*) and
// the cluster (--store etcd).
func daemonFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "iface", Usage: "interface to attach the XDP program to", Required: true},
		&cli.StringFlag{Name: "xdp-mode", Value: "auto", Usage: "native, generic or auto (native, else generic)"},
		&cli.StringFlag{Name: "state-dir", Value: control.DefaultStateDir, Usage: "where the desired state, archive and backups live"},
		socketFlag(),
		&cli.StringFlag{Name: "metrics-addr", Value: control.DefaultMetricsAddr, Usage: "Prometheus /metrics, /healthz, /readyz (empty: off)"},
		&cli.Uint64Flag{Name: "seed", Value: 0x5eed, Usage: "flow hash and Maglev seed: equal on every LB node of a VIP"},
		&cli.IntFlag{Name: "archive-keep", Value: control.DefaultArchiveKeep, Usage: "previous states kept in <state-dir>/archive"},
		&cli.Uint64Flag{Name: "flow-table-size", Value: loader.DefaultFlowTableSize, Usage: "connection table entries per address family"},
		&cli.DurationFlag{Name: "availability-retention", Value: state.DefaultTimelineRetention, Usage: "availability transitions older than this are dropped"},
		&cli.IntFlag{Name: "availability-max-events", Value: state.DefaultTimelineMax, Usage: "availability transitions kept at most (the newest)"},
		&cli.StringFlag{Name: "pin-root", Value: loader.DefaultPinRoot, Usage: "bpffs directory for pinned objects"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		&cli.Uint64Flag{Name: "new-flow-limit", Value: loader.DefaultNewFlowLimit, Usage: "new connection-table entries per CPU per second; past it new flows are steered by the ring without an entry (a SYN flood cannot churn out flows busier than one packet per flow-table-size/(CPUs*limit) seconds); 0 turns the guard off"},
		&cli.DurationFlag{Name: "reweight-interval", Value: weight.DefaultInterval, Usage: "a VIP's ring follows weight changes (agent checks, load metrics, slow start) at most once per interval"},
		&cli.Float64Flag{Name: "reweight-threshold", Value: 100 * weight.DefaultThreshold, Usage: "percent: a reweight needs some backend's effective weight to move by at least this much"},
		&cli.BoolFlag{Name: "vip-open", Usage: "pass traffic for VIP addresses on ports no VIP serves to this host (default: dropped, so no host service answers on a VIP)"},
		&cli.BoolFlag{Name: "vip-no-echo", Usage: "drop ICMP echo (ping) to VIP addresses too"},
		&cli.StringFlag{Name: "hook-user", Usage: "run promotion and demotion commands as this user (default: as the daemon)"},
		&cli.StringSliceFlag{Name: "ha-peer", Usage: "LB pair: the peer's ADDR or ADDR:PORT (repeatable); enables HA"},
		&cli.UintFlag{Name: "ha-priority", Value: pair.DefaultPriority, Usage: "LB pair: 1-255, the higher wins"},
		&cli.DurationFlag{Name: "ha-advert", Value: pair.DefaultAdvert, Usage: "LB pair: advert interval; takeover after 3 × advert + skew"},
		&cli.BoolFlag{Name: "ha-preempt", Usage: "LB pair: take the master role back from a lower priority (after state and flow sync)"},
		&cli.StringFlag{Name: "ha-key-file", Usage: "LB pair: file holding the shared HMAC key (at least 16 bytes)"},
		&cli.StringFlag{Name: "ha-name", Usage: "LB pair: this node's name in adverts (default: the interface's first address)"},
		&cli.UintFlag{Name: "ha-port", Value: ha.DefaultPort, Usage: "LB pair: UDP port of adverts and TCP port of state and flow sync"},
		&cli.StringFlag{Name: "store", Value: "bolt", Usage: "where the desired state lives: bolt (--state-dir, one node or a pair) or etcd (a cluster of active nodes)"},
		&cli.StringSliceFlag{Name: "etcd-endpoints", Usage: "cluster: etcd client URLs (comma-separated or repeated)"},
		&cli.StringFlag{Name: "cluster", Usage: "cluster: its name; its keys live under /sluice/NAME/"},
		&cli.StringFlag{Name: "node-name", Usage: "cluster: this node's name, unique in the cluster (1 to 64 letters, digits, '-', '_' or '.')"},
		&cli.StringFlag{Name: "etcd-ca", Usage: "cluster: CA file that signed etcd's server certificates (enables TLS)"},
		&cli.StringFlag{Name: "etcd-cert", Usage: "cluster: client certificate file for etcd"},
		&cli.StringFlag{Name: "etcd-key", Usage: "cluster: client key file for etcd"},
		&cli.StringFlag{Name: "health-quorum", Value: string(cluster.Majority), Usage: "cluster: a backend is in the rings when majority (more than half the live nodes), any (one node) or local (this node) sees it up"},
		&cli.BoolFlag{Name: "cluster-init", Usage: "cluster: if etcd holds no state for --cluster, seed it with the state this node forwards (without it, a node that forwards VIPs refuses to join an empty cluster)"},
		&cli.IntFlag{Name: "cluster-ttl", Value: 3, Usage: "cluster: seconds of the node's lease; a node cut off from etcd stops coordinating within it"},
		&cli.StringFlag{Name: "flow-sync-key", Usage: "cluster: file holding the shared HMAC key of flow sync (mode 0400 or 0600, root's); enables flow sync between the nodes"},
		&cli.UintFlag{Name: "flow-sync-port", Value: flowsync.DefaultPort, Usage: "cluster: TCP port of flow sync on each node's address (equal on every node)"},
	}, bgpFlags()...)
}

// haOptions reads the --ha-* flags; without --ha-peer the daemon runs alone.
func haOptions(c *cli.Context) (*pair.Options, error) {
	peers := c.StringSlice("ha-peer")
	if len(peers) == 0 {
		for _, f := range []string{"ha-key-file", "ha-preempt", "ha-name"} {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s: needs --ha-peer", f)
			}
		}
		return nil, nil
	}
	o := &pair.Options{Advert: c.Duration("ha-advert"), Preempt: c.Bool("ha-preempt"), Node: c.String("ha-name")}
	for _, s := range peers {
		p, err := ha.ParsePeer(s)
		if err != nil {
			return nil, err
		}
		o.Peers = append(o.Peers, p)
	}
	pr, pt := c.Uint("ha-priority"), c.Uint("ha-port")
	if pr < 1 || pr > 255 {
		return nil, fmt.Errorf("--ha-priority %d: 1 to 255", pr)
	}
	if pt < 1 || pt > 65535 {
		return nil, fmt.Errorf("--ha-port %d: 1 to 65535", pt)
	}
	o.Priority, o.Port = uint8(pr), uint16(pt)
	if len(o.Node) > 40 {
		return nil, fmt.Errorf("--ha-name %q: at most 40 bytes", o.Node)
	}
	if c.String("ha-key-file") == "" {
		return nil, errors.New("--ha-key-file: required with --ha-peer (a shared secret of at least 16 bytes)")
	}
	key, err := pair.ReadKey(c.String("ha-key-file"))
	if err != nil {
		return nil, err
	}
	o.Key = key
	return o, nil
}

// clusterFlags are the flags that only --store etcd uses.
var clusterFlags = []string{"etcd-endpoints", "cluster", "node-name", "etcd-ca", "etcd-cert", "etcd-key", "health-quorum", "cluster-init", "cluster-ttl", "flow-sync-key", "flow-sync-port"}

// clusterOptions reads --store and the cluster flags; with --store bolt
// the daemon keeps its state in --state-dir alone.
func clusterOptions(c *cli.Context) (*cluster.NodeOptions, error) {
	switch c.String("store") {
	case "bolt":
		for _, f := range clusterFlags {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s: needs --store etcd", f)
			}
		}
		return nil, nil
	case "etcd":
	default:
		return nil, fmt.Errorf("--store %q: want bolt or etcd", c.String("store"))
	}
	o := &cluster.NodeOptions{Cluster: c.String("cluster"), Node: c.String("node-name"), TTL: c.Int("cluster-ttl"), Init: c.Bool("cluster-init")}
	for _, e := range c.StringSlice("etcd-endpoints") {
		for _, u := range strings.Split(e, ",") {
			if u = strings.TrimSpace(u); u != "" {
				o.Endpoints = append(o.Endpoints, u)
			}
		}
	}
	if len(o.Endpoints) == 0 {
		return nil, errors.New("--etcd-endpoints: required with --store etcd (URL[,URL...])")
	}
	for _, u := range o.Endpoints {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, fmt.Errorf("--etcd-endpoints %q: want http://HOST:PORT or https://HOST:PORT", u)
		}
	}
	if o.Cluster == "" {
		return nil, errors.New("--cluster: required with --store etcd (the cluster's name)")
	}
	if err := etcdstore.ValidCluster(o.Cluster); err != nil {
		return nil, fmt.Errorf("--cluster %w", err)
	}
	if o.Node == "" {
		return nil, errors.New("--node-name: required with --store etcd (unique in the cluster)")
	}
	if err := etcdstore.ValidName(o.Node); err != nil {
		return nil, fmt.Errorf("--node-name %w", err)
	}
	if o.TTL < 1 || o.TTL > 60 {
		return nil, fmt.Errorf("--cluster-ttl %d: 1 to 60 seconds", o.TTL)
	}
	var err error
	if o.Quorum, err = cluster.ParseQuorum(c.String("health-quorum")); err != nil {
		return nil, fmt.Errorf("--health-quorum %w", err)
	}
	if o.TLS, err = etcdTLS(c); err != nil {
		return nil, err
	}
	if o.TLS, err = endpointsTLS(o.Endpoints, o.TLS); err != nil {
		return nil, err
	}
	return o, nil
}

// endpointsTLS checks that the endpoints' schemes agree with the TLS
// flags: TLS flags with an http:// endpoint would be plain text under a
// flag that asked for TLS, and a mix of the two is a typo. https://
// without the flags trusts the system's CAs.
func endpointsTLS(endpoints []string, cfg *tls.Config) (*tls.Config, error) {
	var plain, secure string
	for _, u := range endpoints {
		if strings.HasPrefix(u, "https://") {
			secure = u
		} else {
			plain = u
		}
	}
	switch {
	case plain != "" && secure != "":
		return nil, fmt.Errorf("--etcd-endpoints: %q is plain http and %q https: use https:// for every member", plain, secure)
	case plain != "" && cfg != nil:
		return nil, fmt.Errorf("--etcd-endpoints %q: plain http, but --etcd-ca/--etcd-cert/--etcd-key ask for TLS: use https://", plain)
	case secure != "" && cfg == nil:
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil
	}
	return cfg, nil
}

// flowSyncOptions reads --flow-sync-key and --flow-sync-port (nil
// without a key: no flow sync).
func flowSyncOptions(c *cli.Context) (*flowsync.Options, error) {
	if c.IsSet("flow-sync-port") && !c.IsSet("flow-sync-key") {
		return nil, errors.New("--flow-sync-port: needs --flow-sync-key")
	}
	if !c.IsSet("flow-sync-key") {
		return nil, nil
	}
	if p := c.Uint("flow-sync-port"); p == 0 || p > 65535 {
		return nil, fmt.Errorf("--flow-sync-port %d: want 1 to 65535", p)
	}
	key, err := pair.ReadKeyFlag("--flow-sync-key", c.String("flow-sync-key"))
	if err != nil {
		return nil, err
	}
	return &flowsync.Options{Key: key, Port: uint16(c.Uint("flow-sync-port"))}, nil
}

// etcdTLS builds the etcd client's TLS from --etcd-ca, --etcd-cert and
// --etcd-key (nil without any of them).
func etcdTLS(c *cli.Context) (*tls.Config, error) {
	info := transport.TLSInfo{TrustedCAFile: c.String("etcd-ca"), CertFile: c.String("etcd-cert"), KeyFile: c.String("etcd-key")}
	if info.TrustedCAFile == "" && info.CertFile == "" && info.KeyFile == "" {
		return nil, nil
	}
	if (info.CertFile == "") != (info.KeyFile == "") {
		return nil, errors.New("--etcd-cert and --etcd-key: give both or neither")
	}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("--etcd-ca/--etcd-cert/--etcd-key: %w", err)
	}
	return cfg, nil
}
