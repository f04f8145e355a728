package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/maglev"
	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
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
			&cli.StringFlag{Name: "pin-root", Value: loader.DefaultPinRoot, Usage: "bpffs directory for pinned objects"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
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
			haOpts, err := haOptions(c)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			d, err := control.New(c.Context, control.Options{
				Iface: c.String("iface"), Mode: mode, StateDir: c.String("state-dir"), Socket: c.String("socket"),
				MetricsAddr: c.String("metrics-addr"), Seed: c.Uint64("seed"), ArchiveKeep: c.Int("archive-keep"),
				FlowTableSize: uint32(c.Uint64("flow-table-size")), PinRoot: c.String("pin-root"), Logger: log, HA: haOpts,
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

func haCommand() *cli.Command {
	return &cli.Command{
		Name:  "ha",
		Usage: "the LB pair: role, peers, sync, planned failover",
		Subcommands: []*cli.Command{
			{
				Name: "status", Usage: "role, peers, advert age, revisions and flow sync lag", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/ha/status", func(st api.HAStatus) error { return printHAStatus(c.App.Writer, st) })
				},
			},
			{
				Name: "failover", Usage: "planned handoff: the master steps down and the peer takes over at once", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					var st api.HAStatus
					if err := newClient(c).do(c.Context, "POST", "/v1/ha/failover", nil, struct{}{}, &st); err != nil {
						return err
					}
					if asJSON {
						return printJSON(c.App.Writer, st)
					}
					fmt.Fprintf(c.App.Writer, "stepped down: this node is now %s; the peer takes over\n", st.Role)
					return nil
				},
			},
		},
	}
}

func printHAStatus(w io.Writer, st api.HAStatus) error {
	if !st.Enabled {
		fmt.Fprintf(w, "not part of an LB pair (role %s, revision %d)\n", st.Role, st.Revision)
		return nil
	}
	role := st.Role
	if st.Fault {
		role += " (fault: interface down)"
	}
	if st.DualMaster {
		role += " (DUAL MASTER)"
	}
	fmt.Fprintf(w, "node %s  role %s  priority %d  preempt %v  advert %s  master-down %s\n", st.Node, role, st.Priority, st.Preempt, st.Advert, st.MasterDown)
	lag := st.SyncLag
	if lag == "" {
		lag = "-"
	}
	fmt.Fprintf(w, "revision %d  synced %v  flow sync lag %s\n", st.Revision, st.Synced, lag)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tNODE\tROLE\tUP\tADVERT AGE\tREVISION")
	for _, p := range st.Peers {
		rev := fmt.Sprint(p.Revision)
		if !p.RevisionOK {
			rev += " (differs)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", p.Addr, dash(p.Node), dash(p.Role), p.Up, dash(p.AdvertAge), rev)
	}
	tw.Flush()
	if len(st.BadAdverts) > 0 {
		fmt.Fprintf(w, "refused adverts: %v\n", st.BadAdverts)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func vipCommand() *cli.Command {
	return &cli.Command{
		Name:  "vip",
		Usage: "add, delete, list VIPs and read their rings",
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "add a VIP", ArgsUsage: "ADDR:PORT/PROTO",
				Flags: []cli.Flag{socketFlag(),
					&cli.StringFlag{Name: "forward", Value: "ipip", Usage: "ipip or dsr"},
					&cli.UintFlag{Name: "ring-size", Value: state.DefaultRingSize, Usage: "Maglev ring size (a prime)"},
					&cli.IntFlag{Name: "min-active", Value: state.DefaultMinActive, Usage: "standbys join the ring below this many usable actives"},
					&cli.StringFlag{Name: "udp-timeout", Value: "30s", Usage: "idle time after which a UDP flow is re-hashed"},
					&cli.StringFlag{Name: "policy", Value: "maglev", Usage: "maglev (spread) or failover (one primary, replicas promoted on failure)"},
					&cli.StringFlag{Name: "promote-cmd", Usage: "failover: command run on promotion (env SLUICE_VIP, SLUICE_OLD_PRIMARY, SLUICE_NEW_PRIMARY, SLUICE_EPOCH, SLUICE_NODE); exit 0 = success"},
					&cli.StringFlag{Name: "promote-url", Usage: "failover: URL POSTed the same fields as JSON on promotion; 2xx = success"},
					&cli.StringFlag{Name: "demote-cmd", Usage: "failover: command run when a recovered old primary rejoins as a replica"},
					&cli.StringFlag{Name: "hook-timeout", Value: "10s", Usage: "failover: time limit of each hook"},
					&cli.BoolFlag{Name: "failback", Usage: "failover: a recovered higher-priority backend takes the primary role back"},
				},
				Action: func(c *cli.Context) error {
					vip, err := oneArg(c, "ADDR:PORT/PROTO")
					if err != nil {
						return err
					}
					if _, err := state.ParseVIPKey(vip); err != nil {
						return err
					}
					if _, err := loader.ParseForward(c.String("forward")); err != nil {
						return fmt.Errorf("--forward: %w", err)
					}
					if !maglev.IsPrime(uint32(c.Uint("ring-size"))) || c.Uint("ring-size") > loader.MaxRingSize {
						return fmt.Errorf("--ring-size %d: must be a prime up to %d (e.g. 4099, 65537, 655373)", c.Uint("ring-size"), loader.MaxRingSize)
					}
					if c.Int("min-active") < 1 {
						return fmt.Errorf("--min-active %d: must be at least 1", c.Int("min-active"))
					}
					if t, err := time.ParseDuration(c.String("udp-timeout")); err != nil || t <= 0 {
						return fmt.Errorf("--udp-timeout %q: want a positive duration such as 30s", c.String("udp-timeout"))
					}
					policy := c.String("policy")
					if policy != state.PolicyMaglev && policy != state.PolicyFailover {
						return fmt.Errorf("--policy %q: want maglev or failover", policy)
					}
					if t, err := time.ParseDuration(c.String("hook-timeout")); err != nil || t <= 0 {
						return fmt.Errorf("--hook-timeout %q: want a positive duration such as 10s", c.String("hook-timeout"))
					}
					hookTimeout := ""
					if policy == state.PolicyFailover {
						hookTimeout = c.String("hook-timeout")
					}
					var st state.State
					err = newClient(c).do(c.Context, "POST", "/v1/vips", nil, api.VIPAddRequest{VIP: vip, Forward: c.String("forward"),
						RingSize: uint32(c.Uint("ring-size")), MinActive: c.Int("min-active"), UDPTimeout: c.String("udp-timeout"),
						Policy: policy, PromoteCmd: c.String("promote-cmd"), PromoteURL: c.String("promote-url"),
						DemoteCmd: c.String("demote-cmd"), HookTimeout: hookTimeout, Failback: c.Bool("failback")}, &st)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "vip %s added (revision %d)\n", vip, st.Revision)
					return nil
				},
			},
			{
				Name: "del", Usage: "delete a VIP", ArgsUsage: "ADDR:PORT/PROTO", Flags: []cli.Flag{socketFlag()},
				Action: func(c *cli.Context) error {
					vip, err := oneArg(c, "ADDR:PORT/PROTO")
					if err != nil {
						return err
					}
					if _, err := state.ParseVIPKey(vip); err != nil {
						return err
					}
					var st state.State
					if err := newClient(c).do(c.Context, "DELETE", "/v1/vips", url.Values{"vip": {vip}}, nil, &st); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "vip %s deleted (revision %d)\n", vip, st.Revision)
					return nil
				},
			},
			{
				Name: "list", Usage: "list VIPs", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					var st state.State
					if err := newClient(c).do(c.Context, "GET", "/v1/state", nil, nil, &st); err != nil {
						return err
					}
					if asJSON {
						return printJSON(c.App.Writer, st.VIPs)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "VIP\tFORWARD\tRING\tMIN-ACTIVE\tUDP-TIMEOUT\tBACKENDS")
					for _, v := range st.VIPs {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%d\n", v.VIP, v.Forward, v.RingSize, v.MinActive, time.Duration(v.UDPTimeout), len(v.Backends))
					}
					return tw.Flush()
				},
			},
			{
				Name: "ring", Usage: "read a VIP's ring back from the kernel", ArgsUsage: "ADDR:PORT/PROTO", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					vip, err := oneArg(c, "ADDR:PORT/PROTO")
					if err != nil {
						return err
					}
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					if _, err := state.ParseVIPKey(vip); err != nil {
						return err
					}
					var ring api.RingResponse
					if err := newClient(c).do(c.Context, "GET", "/v1/ring", url.Values{"vip": {vip}}, nil, &ring); err != nil {
						return err
					}
					if asJSON {
						return json.NewEncoder(c.App.Writer).Encode(ring)
					}
					count := map[string]int{}
					for _, s := range ring.Slots {
						count[s]++
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
					fmt.Fprintf(tw, "vip %s, ring of %d slots\nBACKEND\tSLOTS\tSHARE\n", ring.VIP, ring.RingSize)
					for b, n := range count {
						name := b
						if name == "" {
							name = "(none)"
						}
						fmt.Fprintf(tw, "%s\t%d\t%.2f%%\n", name, n, 100*float64(n)/float64(max(1, ring.RingSize)))
					}
					return tw.Flush()
				},
			},
		},
	}
}

func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("want one argument: %s", what)
	}
	return c.Args().First(), nil
}

func backendCommand() *cli.Command {
	addFlags := []cli.Flag{socketFlag(),
		&cli.UintFlag{Name: "weight", Value: state.DefaultWeight, Usage: "share of new flows (0 drains)"},
		&cli.BoolFlag{Name: "standby", Usage: "take traffic only when usable actives fall below the VIP's min-active"},
		&cli.IntFlag{Name: "priority", Usage: "failover VIPs: replicas with higher priority are promoted first"},
		&cli.StringFlag{Name: "check", Value: "tcp", Usage: "tcp, http, https, udp or none"},
		&cli.UintFlag{Name: "check-port", Usage: "port to probe (default: the VIP's port)"},
		&cli.StringFlag{Name: "check-path", Usage: "http(s) path"},
		&cli.StringFlag{Name: "check-method", Usage: "http(s) method (default GET)"},
		&cli.StringFlag{Name: "check-codes", Usage: "expected http status codes, e.g. 200-399 or 200,204"},
		&cli.StringFlag{Name: "check-body", Usage: "substring the http body must contain"},
		&cli.BoolFlag{Name: "check-tls-verify", Usage: "https: verify the certificate"},
		&cli.StringFlag{Name: "check-payload", Usage: "udp: payload to send (a reply is expected)"},
		&cli.DurationFlag{Name: "interval", Value: health.Defaults.Interval, Usage: "between checks"},
		&cli.DurationFlag{Name: "timeout", Value: health.Defaults.Timeout, Usage: "per check"},
		&cli.DurationFlag{Name: "fastinter", Usage: "between checks while in transition (default: interval)"},
		&cli.IntFlag{Name: "rise", Value: health.Defaults.Rise, Usage: "consecutive passes to become up"},
		&cli.IntFlag{Name: "fall", Value: health.Defaults.Fall, Usage: "consecutive failures to become down"},
		&cli.StringFlag{Name: "mac", Usage: "next-hop MAC (default: resolved through the route and neighbour tables)"},
	}
	action := func(name string) *cli.Command {
		return &cli.Command{
			Name: name, Usage: name + " a backend", ArgsUsage: "VIP ADDR", Flags: []cli.Flag{socketFlag()},
			Action: func(c *cli.Context) error {
				vip, addr, err := vipAndAddr(c)
				if err != nil {
					return err
				}
				var st state.State
				if err := newClient(c).do(c.Context, "POST", "/v1/backends/action", nil,
					api.BackendActionRequest{VIP: vip, Addr: addr, Action: name}, &st); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "backend %s of %s: %s done (revision %d)\n", addr, vip, name, st.Revision)
				return nil
			},
		}
	}
	return &cli.Command{
		Name:  "backend",
		Usage: "add, delete, drain, undrain, disable, enable backends",
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "add a backend to a VIP", ArgsUsage: "VIP ADDR", Flags: addFlags,
				Action: func(c *cli.Context) error {
					vip, addr, err := vipAndAddr(c)
					if err != nil {
						return err
					}
					b, err := backendFromFlags(c, addr)
					if err != nil {
						return err
					}
					var st state.State
					if err := newClient(c).do(c.Context, "POST", "/v1/backends", nil, api.BackendAddRequest{VIP: vip, Backend: b}, &st); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "backend %s added to %s (revision %d)\n", addr, vip, st.Revision)
					return nil
				},
			},
			action("del"), action("drain"), action("undrain"), action("disable"), action("enable"),
		},
	}
}

func vipAndAddr(c *cli.Context) (string, string, error) {
	if c.NArg() != 2 {
		return "", "", fmt.Errorf("want two arguments: VIP ADDR")
	}
	vip, addr := c.Args().Get(0), c.Args().Get(1)
	if _, err := state.ParseVIPKey(vip); err != nil {
		return "", "", err
	}
	if a, err := netip.ParseAddr(addr); err != nil || a.Zone() != "" {
		return "", "", fmt.Errorf("backend address %q: not an IP address", addr)
	}
	return vip, addr, nil
}

func backendFromFlags(c *cli.Context, addr string) (state.Backend, error) {
	if _, err := health.ParseType(c.String("check")); err != nil {
		return state.Backend{}, fmt.Errorf("--check: %w", err)
	}
	if c.Uint("check-port") > 65535 {
		return state.Backend{}, fmt.Errorf("--check-port %d: not a port", c.Uint("check-port"))
	}
	if c.Uint("weight") > 1<<16 {
		return state.Backend{}, fmt.Errorf("--weight %d: at most 65536", c.Uint("weight"))
	}
	if m := c.String("mac"); m != "" {
		if hw, err := net.ParseMAC(m); err != nil || len(hw) != 6 {
			return state.Backend{}, fmt.Errorf("--mac %q: not an Ethernet address", m)
		}
	}
	if codes := c.String("check-codes"); codes != "" {
		if err := health.ParseCodes(codes); err != nil {
			return state.Backend{}, fmt.Errorf("--check-codes: %w", err)
		}
	}
	s := health.Settings{Interval: c.Duration("interval"), Timeout: c.Duration("timeout"), FastInter: c.Duration("fastinter"),
		Rise: c.Int("rise"), Fall: c.Int("fall")}
	if err := s.Validate(); err != nil {
		return state.Backend{}, fmt.Errorf("--%w", err)
	}
	return state.Backend{
		Addr: addr, Weight: uint32(c.Uint("weight")), Standby: c.Bool("standby"), MAC: c.String("mac"), Priority: c.Int("priority"),
		Check: state.Check{Type: c.String("check"), Port: uint16(c.Uint("check-port")), Path: c.String("check-path"),
			Method: c.String("check-method"), Codes: c.String("check-codes"), Body: c.String("check-body"),
			TLSVerify: c.Bool("check-tls-verify"), Payload: c.String("check-payload"),
			Interval: state.Duration(s.Interval), Timeout: state.Duration(s.Timeout), FastInter: state.Duration(s.FastInter),
			Rise: s.Rise, Fall: s.Fall},
	}, nil
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name: "status", Usage: "VIPs, backends, health and counters", Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			return show(c, "/v1/status", func(st api.Status) error { return printStatus(c.App.Writer, st) })
		},
	}
}

func printStatus(w io.Writer, st api.Status) error {
	fmt.Fprintf(w, "revision %d, role %s, iface %s, up %s\n", st.Revision, st.Role, st.Iface, st.Uptime)
	if st.HA != nil {
		for _, p := range st.HA.Peers {
			match := "same revision"
			if !p.RevisionOK {
				match = "REVISION DIFFERS"
			}
			fmt.Fprintf(w, "ha peer %s (%s): %s, revision %d, %s\n", p.Addr, dash(p.Node), dash(p.Role), p.Revision, match)
		}
	}
	for _, v := range st.VIPs {
		fmt.Fprintf(w, "\nvip %s  forward %s  ring %d (sha256 %.12s)  min-active %d  packets %d  bytes %d\n",
			v.VIP, v.Forward, v.RingSize, v.RingSHA256, v.MinActive, v.Packets, v.Bytes)
		if v.Policy == state.PolicyFailover {
			primary := v.Primary
			if primary == "" {
				primary = "none (dropping)"
			}
			fmt.Fprintf(w, "  policy failover  primary %s  epoch %d\n", primary, v.Epoch)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  BACKEND\tSTATE\tWEIGHT\tSTANDBY\tSLOTS\tPACKETS\tBYTES\tLAST CHANGE\tREASON")
		for _, b := range v.Backends {
			lc := "-"
			if !b.LastChange.IsZero() {
				lc = b.LastChange.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%v\t%d\t%d\t%d\t%s\t%s\n", b.Addr, b.State, b.Weight, b.Standby, b.RingSlots, b.Packets, b.Bytes, lc, b.Reason)
		}
		tw.Flush()
	}
	return nil
}

func statsCommand() *cli.Command {
	return &cli.Command{
		Name: "stats", Usage: "live per-VIP and per-backend packet rates",
		Flags: []cli.Flag{socketFlag(), outputFlag(),
			&cli.BoolFlag{Name: "watch", Usage: "keep printing every --every"},
			&cli.DurationFlag{Name: "every", Value: time.Second, Usage: "sampling period"}},
		Action: func(c *cli.Context) error {
			asJSON, err := wantJSON(c)
			if err != nil {
				return err
			}
			if c.Duration("every") <= 0 {
				return fmt.Errorf("--every %v: must be positive", c.Duration("every"))
			}
			cl := newClient(c)
			var prev api.Status
			if err := cl.do(c.Context, "GET", "/v1/status", nil, nil, &prev); err != nil {
				return err
			}
			for {
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(c.Duration("every")):
				}
				var cur api.Status
				if err := cl.do(c.Context, "GET", "/v1/status", nil, nil, &cur); err != nil {
					return err
				}
				rates := statRates(prev, cur, c.Duration("every"))
				if asJSON {
					if err := json.NewEncoder(c.App.Writer).Encode(rates); err != nil {
						return err
					}
				} else {
					tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "VIP\tBACKEND\tSTATE\tPPS\tBPS\tSHARE")
					for _, r := range rates {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t%s\n", r.VIP, r.Backend, r.State, r.PPS, r.BPS, bar(r.Share))
					}
					tw.Flush()
				}
				prev = cur
				if !c.Bool("watch") {
					return nil
				}
			}
		},
	}
}

type rate struct {
	VIP     string  `json:"vip"`
	Backend string  `json:"backend,omitempty"`
	State   string  `json:"state,omitempty"`
	PPS     float64 `json:"pps"`
	BPS     float64 `json:"bps"`
	Share   float64 `json:"share"`
}

func statRates(prev, cur api.Status, every time.Duration) []rate {
	old := map[string]uint64{}
	oldB := map[string]uint64{}
	for _, v := range prev.VIPs {
		old[v.VIP] = v.Packets
		oldB[v.VIP] = v.Bytes
		for _, b := range v.Backends {
			old[v.VIP+" "+b.Addr] = b.Packets
			oldB[v.VIP+" "+b.Addr] = b.Bytes
		}
	}
	sec := every.Seconds()
	var out []rate
	for _, v := range cur.VIPs {
		vp := float64(v.Packets-old[v.VIP]) / sec
		out = append(out, rate{VIP: v.VIP, PPS: vp, BPS: float64(v.Bytes-oldB[v.VIP]) / sec, Share: 1})
		for _, b := range v.Backends {
			k := v.VIP + " " + b.Addr
			p := float64(b.Packets-old[k]) / sec
			share := 0.0
			if vp > 0 {
				share = p / vp
			}
			out = append(out, rate{VIP: v.VIP, Backend: b.Addr, State: b.State, PPS: p, BPS: float64(b.Bytes-oldB[k]) / sec, Share: share})
		}
	}
	return out
}

func bar(share float64) string {
	n := int(share*30 + 0.5)
	return strings.Repeat("█", max(0, min(30, n))) + fmt.Sprintf(" %5.1f%%", 100*share)
}

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name: "events", Usage: "state transitions and changes",
		Flags: []cli.Flag{socketFlag(), outputFlag(), &cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new events"}},
		Action: func(c *cli.Context) error {
			asJSON, err := wantJSON(c)
			if err != nil {
				return err
			}
			var perr error
			err = newClient(c).events(c.Context, c.Bool("follow"), func(e api.Event) bool {
				if asJSON {
					perr = json.NewEncoder(c.App.Writer).Encode(e)
					return perr == nil
				}
				line := fmt.Sprintf("%s  %-7s", e.Time.Format(time.RFC3339Nano), e.Kind)
				if e.VIP != "" {
					line += " " + e.VIP
				}
				if e.Backend != "" {
					line += " " + e.Backend
				}
				if e.From != "" || e.To != "" {
					line += fmt.Sprintf(" %s -> %s", e.From, e.To)
				}
				if e.Revision != 0 {
					line += fmt.Sprintf(" (revision %d)", e.Revision)
				}
				if e.Reason != "" {
					line += ": " + e.Reason
				}
				_, perr = fmt.Fprintln(c.App.Writer, line)
				return perr == nil
			})
			return errors.Join(err, perr)
		},
	}
}

func applyCommand() *cli.Command {
	return &cli.Command{
		Name: "apply", Usage: "apply a desired state file: idempotent, prints the diff, one revision",
		Flags: []cli.Flag{socketFlag(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "YAML or JSON state file"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the diff only"}},
		Action: func(c *cli.Context) error {
			raw, err := os.ReadFile(c.String("file"))
			if err != nil {
				return fmt.Errorf("-f: %w", err)
			}
			var st state.State
			dec := yaml.NewDecoder(strings.NewReader(string(raw)))
			dec.KnownFields(true)
			if err := dec.Decode(&st); err != nil {
				return fmt.Errorf("-f %s: %w", c.String("file"), err)
			}
			var resp api.ApplyResponse
			if err := newClient(c).do(c.Context, "POST", "/v1/apply", nil, api.ApplyRequest{State: st, DryRun: c.Bool("dry-run")}, &resp); err != nil {
				return err
			}
			for _, l := range resp.Diff {
				fmt.Fprintln(c.App.Writer, l)
			}
			switch {
			case len(resp.Diff) == 0:
				fmt.Fprintf(c.App.Writer, "no change (revision %d)\n", resp.Revision)
			case c.Bool("dry-run"):
				fmt.Fprintf(c.App.Writer, "dry run: nothing applied (revision %d)\n", resp.Revision)
			default:
				fmt.Fprintf(c.App.Writer, "applied as revision %d\n", resp.Revision)
			}
			return nil
		},
	}
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name: "export", Usage: "print the desired state in the format apply accepts",
		Flags: []cli.Flag{socketFlag(), &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "yaml", Usage: "yaml or json"}},
		Action: func(c *cli.Context) error {
			var st state.State
			if err := newClient(c).do(c.Context, "GET", "/v1/state", nil, nil, &st); err != nil {
				return err
			}
			switch c.String("output") {
			case "yaml":
				enc := yaml.NewEncoder(c.App.Writer)
				enc.SetIndent(2)
				return enc.Encode(st)
			case "json":
				return printJSON(c.App.Writer, st)
			}
			return fmt.Errorf("-o %q: want yaml or json", c.String("output"))
		},
	}
}

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "save, restore and list state snapshots",
		Subcommands: []*cli.Command{
			{
				Name: "save", Usage: "write a checksummed snapshot atomically", ArgsUsage: "FILE", Flags: []cli.Flag{socketFlag()},
				Action: func(c *cli.Context) error {
					file, err := oneArg(c, "FILE")
					if err != nil {
						return err
					}
					var snap state.Snapshot
					if err := newClient(c).do(c.Context, "GET", "/v1/backup", nil, nil, &snap); err != nil {
						return err
					}
					if err := snap.WriteFile(file); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "saved revision %d to %s (sha256 %s)\n", snap.Revision, file, snap.SHA256)
					return nil
				},
			},
			{
				Name: "restore", Usage: "validate a snapshot completely, then apply it as one change", ArgsUsage: "FILE", Flags: []cli.Flag{socketFlag()},
				Action: func(c *cli.Context) error {
					file, err := oneArg(c, "FILE")
					if err != nil {
						return err
					}
					data, err := os.ReadFile(file)
					if err != nil {
						return err
					}
					snap, err := state.ParseSnapshot(data)
					if err != nil {
						return fmt.Errorf("%s refused, nothing changed: %w", file, err)
					}
					var st state.State
					if err := newClient(c).do(c.Context, "POST", "/v1/restore", nil, data, &st); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "restored snapshot of revision %d as revision %d\n", snap.Revision, st.Revision)
					return nil
				},
			},
			{
				Name: "list", Usage: "list archived previous states", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/backups", func(entries []state.ArchiveEntry) error {
						tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
						fmt.Fprintln(tw, "REVISION\tTIME\tSIZE\tPATH")
						for _, e := range entries {
							fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", e.Revision, e.Time.Format(time.RFC3339), e.Size, e.Path)
						}
						return tw.Flush()
					})
				},
			},
		},
	}
}

func promoteCommand() *cli.Command {
	return &cli.Command{
		Name: "promote", Usage: "planned switchover: make ADDR the primary of a failover VIP", ArgsUsage: "VIP ADDR",
		Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			vip, addr, err := vipAndAddr(c)
			if err != nil {
				return err
			}
			asJSON, err := wantJSON(c)
			if err != nil {
				return err
			}
			var res api.PromoteResult
			if err := newClient(c).do(c.Context, "POST", "/v1/promote", nil, api.PromoteRequest{VIP: vip, Addr: addr}, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(c.App.Writer, res)
			}
			fmt.Fprintf(c.App.Writer, "%s is the primary of %s (epoch %d, was %s; hook took %s)\n", res.NewPrimary, res.VIP, res.Epoch, res.OldPrimary, res.HookTime)
			return nil
		},
	}
}

func availabilityCommand() *cli.Command {
	return &cli.Command{
		Name: "availability", Usage: "measured and modelled (k-of-n) availability of each VIP, with nines",
		Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			return show(c, "/v1/availability", func(rep api.AvailabilityReport) error {
				return printAvailability(c.App.Writer, rep)
			})
		},
	}
}

func printAvailability(w io.Writer, rep api.AvailabilityReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VIP / BACKEND\tNEEDS\tWINDOW\tMEASURED\tNINES\tMODELLED\tNINES")
	for _, v := range rep.VIPs {
		for _, w := range control.Windows {
			m, ok := v.Measured[w.Name]
			if !ok {
				continue
			}
			fmt.Fprintf(tw, "%s\t%d of %d\t%s\t%.6f\t%.2f\t%.6f\t%.2f\n", v.VIP, v.Need, v.Of, w.Name,
				m, control.Nines(m), v.Modelled[w.Name], control.Nines(v.Modelled[w.Name]))
		}
		for _, b := range v.Backends {
			if m, ok := b.Measured["all"]; ok {
				fmt.Fprintf(tw, "  %s\t\tall\t%.6f\t%.2f\t\t\n", b.Addr, m, control.Nines(m))
			}
		}
	}
	return tw.Flush()
}

func drillCommand() *cli.Command {
	return &cli.Command{
		Name:  "drill",
		Usage: "disaster drills: perform a failure for real, measure, restore, report",
		Subcommands: []*cli.Command{
			{
				Name: "run", Usage: "run a drill", ArgsUsage: "[ADDR]",
				Flags: []cli.Flag{socketFlag(), outputFlag(),
					&cli.StringFlag{Name: "vip", Required: true, Usage: "the VIP to drill"},
					&cli.StringFlag{Name: "action", Required: true, Usage: "disable-backend ADDR, fail-primary, or promote ADDR"},
					&cli.DurationFlag{Name: "hold", Value: 10 * time.Second, Usage: "how long to hold the failure"},
					&cli.DurationFlag{Name: "max-apply", Value: 250 * time.Millisecond, Usage: "pass only if the change reached the maps within this"},
					&cli.StringFlag{Name: "report", Usage: "also write the JSON report to this file"},
				},
				Action: func(c *cli.Context) error {
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					if _, err := state.ParseVIPKey(c.String("vip")); err != nil {
						return fmt.Errorf("--vip: %w", err)
					}
					if c.Duration("hold") <= 0 || c.Duration("max-apply") <= 0 {
						return fmt.Errorf("--hold and --max-apply must be positive")
					}
					req := api.DrillRequest{VIP: c.String("vip"), Action: c.String("action"), Addr: c.Args().First(),
						Hold: c.Duration("hold").String(), MaxApply: c.Duration("max-apply").String()}
					var rep api.DrillReport
					if err := newClient(c).do(c.Context, "POST", "/v1/drills", nil, req, &rep); err != nil {
						return err
					}
					if f := c.String("report"); f != "" {
						raw, _ := json.MarshalIndent(rep, "", "  ")
						if err := state.WriteFileAtomic(f, append(raw, '\n'), 0o600); err != nil {
							return err
						}
					}
					if asJSON {
						return printJSON(c.App.Writer, rep)
					}
					printDrill(c.App.Writer, rep)
					if !rep.Pass {
						return cli.Exit("", 1)
					}
					return nil
				},
			},
			{
				Name: "list", Usage: "list past drill reports", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/drills", func(reps []api.DrillReport) error {
						tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
						fmt.Fprintln(tw, "ID\tVIP\tACTION\tTARGET\tAPPLY\tRESULT")
						for _, r := range reps {
							res := "pass"
							if !r.Pass {
								res = "FAIL: " + strings.Join(r.Failures, "; ")
							}
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", r.ID, r.VIP, r.Action, r.Target,
								time.Duration(r.ApplySeconds*float64(time.Second)).Round(time.Microsecond), res)
						}
						return tw.Flush()
					})
				},
			},
		},
	}
}

func printDrill(w io.Writer, r api.DrillReport) {
	fmt.Fprintf(w, "drill %s: %s %s on %s\n", r.ID, r.Action, r.Target, r.VIP)
	for _, s := range r.Steps {
		fmt.Fprintf(w, "  %s  %s\n", s.Time.Format("15:04:05.000"), s.What)
	}
	fmt.Fprintf(w, "  committed after %v; committed -> maps %v (max %s)\n",
		time.Duration(r.CommitSeconds*float64(time.Second)).Round(time.Microsecond),
		time.Duration(r.ApplySeconds*float64(time.Second)).Round(time.Microsecond), r.MaxApply)
	if r.HookOutput != "" {
		fmt.Fprintf(w, "  hook: %s (%s)\n", r.HookOutput, r.HookTime)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  BACKEND\tBEFORE PPS\tSHARE\tDURING PPS\tSHARE\tSTATE")
	for _, b := range r.Backends {
		fmt.Fprintf(tw, "  %s\t%.0f\t%.1f%%\t%.0f\t%.1f%%\t%s -> %s\n", b.Addr, b.BaselinePPS, 100*b.BaselineShare, b.DuringPPS, 100*b.DuringShare, b.StateBefore, b.StateAfter)
	}
	tw.Flush()
	fmt.Fprintf(w, "  other backends stayed healthy: %v\n", r.OthersHealthy)
	if len(r.NotRestored) > 0 {
		fmt.Fprintf(w, "  NOT RESTORED: %s\n", strings.Join(r.NotRestored, "; "))
	}
	if r.Pass {
		fmt.Fprintln(w, "  result: pass")
	} else {
		fmt.Fprintf(w, "  result: FAIL: %s\n", strings.Join(r.Failures, "; "))
	}
}

// show GETs path from the daemon and prints the answer as JSON (-o json)
// or through table.
func show[T any](c *cli.Context, path string, table func(T) error) error {
	asJSON, err := wantJSON(c)
	if err != nil {
		return err
	}
	var v T
	if err := newClient(c).do(c.Context, "GET", path, nil, nil, &v); err != nil {
		return err
	}
	if asJSON {
		return printJSON(c.App.Writer, v)
	}
	return table(v)
}
