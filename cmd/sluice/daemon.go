package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the data plane, health checks, reconciler, API and metrics",
		Flags: []cli.Flag{
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
		},
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
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			d, err := control.New(c.Context, control.Options{
				Iface: c.String("iface"), Mode: mode, StateDir: c.String("state-dir"), Socket: c.String("socket"),
				MetricsAddr: c.String("metrics-addr"), Seed: c.Uint64("seed"), ArchiveKeep: c.Int("archive-keep"),
				FlowTableSize: uint32(c.Uint64("flow-table-size")), PinRoot: c.String("pin-root"), Logger: log, HA: haOpts,
				HookUser: c.String("hook-user"), VIPOpen: c.Bool("vip-open"), VIPNoEcho: c.Bool("vip-no-echo"),
				NewFlowLimit: uint32(limit),
				Timeline:     state.TimelineLimits{Retention: c.Duration("availability-retention"), MaxEvents: c.Int("availability-max-events")},
			})
			if err != nil {
				return err
			}
			return d.Run(c.Context)
		},
	}
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
