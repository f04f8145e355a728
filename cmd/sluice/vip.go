package main

import (
	"fmt"
	"io"
	"math"
	"net/url"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

func vipCommand() *cli.Command {
	return &cli.Command{
		Name:        "vip",
		Usage:       "add, delete, list VIPs and read their rings",
		Subcommands: []*cli.Command{vipAddCommand(), vipDelCommand(), vipListCommand(), vipRingCommand()},
	}
}

func vipAddCommand() *cli.Command {
	return &cli.Command{
		Name: "add", Usage: "add a VIP", ArgsUsage: "ADDR:PORT/PROTO",
		Flags: []cli.Flag{socketFlag(),
			&cli.StringFlag{Name: "forward", Value: "ipip", Usage: "ipip, gue (IP in UDP: backends' RSS spreads it) or dsr"},
			&cli.UintFlag{Name: "gue-port", Usage: fmt.Sprintf("forward gue: the backends' GUE UDP port (default %d)", state.DefaultGUEPort)},
			&cli.UintFlag{Name: "ring-size", Value: state.DefaultRingSize, Usage: "Maglev ring size (a prime)"},
			&cli.IntFlag{Name: "min-active", Value: state.DefaultMinActive, Usage: "standbys join the ring below this many usable actives"},
			&cli.StringFlag{Name: "udp-timeout", Value: "30s", Usage: "idle time after which a UDP flow is re-hashed"},
			&cli.StringFlag{Name: "policy", Value: "maglev", Usage: "maglev (spread) or failover (one primary, replicas promoted on failure)"},
			&cli.StringFlag{Name: "promote-cmd", Usage: "failover: command run on promotion (env SLUICE_VIP, SLUICE_OLD_PRIMARY, SLUICE_NEW_PRIMARY, SLUICE_EPOCH, SLUICE_NODE); exit 0 = success"},
			&cli.StringFlag{Name: "promote-url", Usage: "failover: URL POSTed the same fields as JSON on promotion; 2xx = success"},
			&cli.StringFlag{Name: "demote-cmd", Usage: "failover: command run when a recovered old primary rejoins as a replica"},
			&cli.StringFlag{Name: "hook-timeout", Value: "10s", Usage: "failover: time limit of each hook"},
			&cli.BoolFlag{Name: "failback", Usage: "failover: a recovered higher-priority backend takes the primary role back"},
			checkViaFlag("where its backends' health checks go, unless a backend says: addr (the backend's own address) or vip (the VIP, through the data plane to that backend, as its traffic goes)"),
		},
		Action: func(c *cli.Context) error {
			req, err := vipAddRequest(c)
			if err != nil {
				return err
			}
			var st state.State
			if err := newClient(c).do(c.Context, "POST", "/v1/vips", nil, req, &st); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "vip %s added (revision %d)\n", req.VIP, st.Revision)
			return nil
		},
	}
}

// vipAddRequest reads `vip add`'s argument and flags and checks them
// with the model's rules, naming the flag of any bad value before
// anything is sent.
func vipAddRequest(c *cli.Context) (api.VIPAddRequest, error) {
	vip, err := vipArg(c)
	if err != nil {
		return api.VIPAddRequest{}, err
	}
	if c.IsSet("gue-port") && c.String("forward") != state.ForwardGUE {
		return api.VIPAddRequest{}, fmt.Errorf("--gue-port: only with --forward gue")
	}
	if c.Uint("gue-port") > 65535 || c.IsSet("gue-port") && c.Uint("gue-port") == 0 {
		return api.VIPAddRequest{}, fmt.Errorf("--gue-port %d: want 1-65535", c.Uint("gue-port"))
	}
	if err := zeroGiven(c, "ring-size", "min-active"); err != nil {
		return api.VIPAddRequest{}, err
	}
	if c.Uint("ring-size") > math.MaxUint32 {
		return api.VIPAddRequest{}, fmt.Errorf("--ring-size %d: too large", c.Uint("ring-size"))
	}
	udpTimeout, err := durationFlag(c, "udp-timeout", "30s")
	if err != nil {
		return api.VIPAddRequest{}, err
	}
	req := api.VIPAddRequest{VIP: vip, Forward: c.String("forward"), GUEPort: uint16(c.Uint("gue-port")),
		RingSize: uint32(c.Uint("ring-size")), MinActive: c.Int("min-active"), UDPTimeout: udpTimeout,
		Policy: c.String("policy"), PromoteCmd: c.String("promote-cmd"), PromoteURL: c.String("promote-url"),
		DemoteCmd: c.String("demote-cmd"), Failback: c.Bool("failback"), CheckVia: c.String("check-via")}
	hookTimeout, err := durationFlag(c, "hook-timeout", "10s")
	if err != nil {
		return api.VIPAddRequest{}, err
	}
	if req.Policy == state.PolicyFailover {
		req.HookTimeout = hookTimeout
	}
	v := req.Model()
	return req, flagError(v.Validate())
}

// durationFlag parses a duration flag (a string flag, so that its help
// shows the default as written).
func durationFlag(c *cli.Context, name, example string) (state.Duration, error) {
	t, err := time.ParseDuration(c.String(name))
	if err != nil || t <= 0 {
		return 0, fmt.Errorf("--%s %q: want a positive duration such as %s", name, c.String(name), example)
	}
	return state.Duration(t), nil
}

func checkViaFlag(usage string) cli.Flag { return &cli.StringFlag{Name: "check-via", Usage: usage} }

func vipDelCommand() *cli.Command {
	return &cli.Command{
		Name: "del", Usage: "delete a VIP", ArgsUsage: "ADDR:PORT/PROTO", Flags: []cli.Flag{socketFlag()},
		Action: func(c *cli.Context) error {
			vip, err := vipArg(c)
			if err != nil {
				return err
			}
			var st state.State
			if err := newClient(c).do(c.Context, "DELETE", "/v1/vips", url.Values{"vip": {vip}}, nil, &st); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "vip %s deleted (revision %d)\n", vip, st.Revision)
			return nil
		},
	}
}

func vipListCommand() *cli.Command {
	return &cli.Command{
		Name: "list", Usage: "list VIPs", Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			return call(c, func(cl *client) ([]state.VIP, error) {
				var st state.State
				err := cl.do(c.Context, "GET", "/v1/state", nil, nil, &st)
				return st.VIPs, err
			}, func(vips []state.VIP) error { return printVIPs(c.App.Writer, vips) })
		},
	}
}

func printVIPs(w io.Writer, vips []state.VIP) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "VIP\tFORWARD\tRING\tMIN-ACTIVE\tUDP-TIMEOUT\tBACKENDS")
	for _, v := range vips {
		fwd := v.Forward
		if v.GUEPort != 0 {
			fwd = fmt.Sprintf("%s:%d", fwd, v.GUEPort)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%d\n", v.VIP, fwd, v.RingSize, v.MinActive, time.Duration(v.UDPTimeout), len(v.Backends))
	}
	return tw.Flush()
}

func vipRingCommand() *cli.Command {
	return &cli.Command{
		Name: "ring", Usage: "read a VIP's ring back from the kernel", ArgsUsage: "ADDR:PORT/PROTO", Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			vip, err := vipArg(c)
			if err != nil {
				return err
			}
			return call(c, func(cl *client) (api.RingResponse, error) {
				var ring api.RingResponse
				err := cl.do(c.Context, "GET", "/v1/ring", url.Values{"vip": {vip}}, nil, &ring)
				return ring, err
			}, func(ring api.RingResponse) error { return printRing(c.App.Writer, ring) })
		},
	}
}

func printRing(w io.Writer, ring api.RingResponse) error {
	count := map[string]int{}
	for _, s := range ring.Slots {
		count[s]++
	}
	tw := newTable(w)
	fmt.Fprintf(tw, "vip %s, ring of %d slots\nBACKEND\tSLOTS\tSHARE\n", ring.VIP, ring.RingSize)
	for b, n := range count {
		name := b
		if name == "" {
			name = "(none)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f%%\n", name, n, 100*float64(n)/float64(max(1, ring.RingSize)))
	}
	return tw.Flush()
}
