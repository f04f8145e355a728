package main

import (
	"fmt"
	"math"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

func backendCommand() *cli.Command {
	addFlags := []cli.Flag{socketFlag(),
		&cli.UintFlag{Name: "weight", Value: state.DefaultWeight, Usage: "share of new flows (0 drains)"},
		&cli.BoolFlag{Name: "standby", Usage: "take traffic only when usable actives fall below the VIP's min-active"},
		&cli.IntFlag{Name: "priority", Usage: "failover VIPs: replicas with higher priority are promoted first"},
		&cli.StringFlag{Name: "check", Value: "tcp", Usage: "tcp, http, https, udp, grpc (grpc.health.v1) or none"},
		&cli.UintFlag{Name: "check-port", Usage: "port to probe (default: the VIP's port)"},
		&cli.StringFlag{Name: "check-path", Usage: "http(s) path"},
		&cli.StringFlag{Name: "check-method", Usage: "http(s) method (default GET)"},
		&cli.StringFlag{Name: "check-codes", Usage: "expected http status codes, e.g. 200-399 or 200,204"},
		&cli.StringFlag{Name: "check-body", Usage: "substring the http body must contain"},
		&cli.BoolFlag{Name: "check-tls-verify", Usage: "https, grpc with --check-tls: verify the certificate"},
		&cli.StringFlag{Name: "check-service", Usage: "grpc: the service to ask about (default: the server's overall health)"},
		&cli.BoolFlag{Name: "check-tls", Usage: "grpc: speak TLS"},
		&cli.StringFlag{Name: "check-payload", Usage: "udp: payload to send (a reply is expected)"},
		&cli.DurationFlag{Name: "interval", Value: state.DefaultInterval, Usage: "between checks"},
		&cli.DurationFlag{Name: "timeout", Value: state.DefaultTimeout, Usage: "per check"},
		&cli.DurationFlag{Name: "fastinter", Usage: "between checks while in transition (default: interval)"},
		&cli.IntFlag{Name: "rise", Value: state.DefaultRise, Usage: "consecutive passes to become up"},
		&cli.IntFlag{Name: "fall", Value: state.DefaultFall, Usage: "consecutive failures to become down"},
		checkViaFlag("addr (probe the backend's own address) or vip (probe the VIP, through the data plane to this backend, as its traffic goes: a backend without the VIP or its decapsulator fails); default: the VIP's --check-via"),
		&cli.StringFlag{Name: "on-error", Usage: "fail-check (the default: a failure counts towards --fall) or mark-down (a refused, reset or unreachable check marks the backend down at once; a timeout still counts one)"},
		&cli.StringFlag{Name: "mac", Usage: "next-hop MAC (default: resolved through the route and neighbour tables)"},
		&cli.UintFlag{Name: "agent-port", Usage: "agent check (HAProxy's agent-check): TCP port where the backend answers its weight (75%) and state (up, down, drain, maint, ready)"},
		&cli.DurationFlag{Name: "agent-interval", Usage: "between agent checks (default: --interval)"},
		&cli.StringFlag{Name: "agent-send", Usage: "agent check: string sent first (\\n and \\r are a newline and a carriage return)"},
		&cli.StringFlag{Name: "load-metric", Usage: "URL#SERIES of a Prometheus text endpoint, e.g. http://10.0.0.2:8000/metrics#vllm:num_requests_waiting: above --load-target the backend's share of new flows falls in proportion"},
		&cli.Float64Flag{Name: "load-target", Value: state.DefaultLoadTarget, Usage: "load metric: the value at or under which the backend keeps its full weight"},
		&cli.DurationFlag{Name: "load-interval", Usage: "between load scrapes (default: --interval)"},
		&cli.DurationFlag{Name: "slow-start", Usage: "ramp the backend's weight from 10% to 100% over this long each time it becomes usable (added, recovered, undrained)"},
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
					b, err := backendFromFlags(c, vip, addr)
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

// backendFromFlags reads `backend add`'s flags into a backend of the VIP
// vip and checks it with the model's rules, naming the flag of any bad
// value.
func backendFromFlags(c *cli.Context, vip, addr string) (state.Backend, error) {
	for _, f := range []string{"check-port", "agent-port"} {
		if c.Uint(f) > 65535 {
			return state.Backend{}, fmt.Errorf("--%s %d: not a port", f, c.Uint(f))
		}
	}
	if c.Uint("weight") > math.MaxUint32 {
		return state.Backend{}, fmt.Errorf("--weight %d: at most %d", c.Uint("weight"), state.MaxWeight)
	}
	if err := zeroGiven(c, "interval", "timeout", "rise", "fall", "agent-interval", "load-target", "load-interval"); err != nil {
		return state.Backend{}, err
	}
	for _, f := range []string{"agent-interval", "agent-send"} {
		if c.IsSet(f) && !c.IsSet("agent-port") {
			return state.Backend{}, fmt.Errorf("--%s: needs --agent-port", f)
		}
	}
	for _, f := range []string{"load-target", "load-interval"} {
		if c.IsSet(f) && !c.IsSet("load-metric") {
			return state.Backend{}, fmt.Errorf("--%s: needs --load-metric", f)
		}
	}
	b := state.Backend{
		Addr: addr, Weight: uint32(c.Uint("weight")), Standby: c.Bool("standby"), MAC: c.String("mac"), Priority: c.Int("priority"),
		Check: state.Check{Type: c.String("check"), Port: uint16(c.Uint("check-port")), Path: c.String("check-path"),
			Method: c.String("check-method"), Codes: c.String("check-codes"), Body: c.String("check-body"),
			TLSVerify: c.Bool("check-tls-verify"), Payload: c.String("check-payload"),
			Service: c.String("check-service"), TLS: c.Bool("check-tls"),
			Interval: state.Duration(c.Duration("interval")), Timeout: state.Duration(c.Duration("timeout")),
			FastInter: state.Duration(c.Duration("fastinter")), Rise: c.Int("rise"), Fall: c.Int("fall"),
			OnError: c.String("on-error"), Via: c.String("check-via")},
		Agent: agentFromFlags(c), Load: loadFromFlags(c), SlowStart: state.Duration(c.Duration("slow-start")),
	}
	k, err := state.ParseVIPKey(vip)
	if err != nil {
		return state.Backend{}, err
	}
	return b, flagError(b.Validate(k))
}

// agentFromFlags is the --agent-* flags' agent check, or nil.
func agentFromFlags(c *cli.Context) *state.Agent {
	if !c.IsSet("agent-port") {
		return nil
	}
	send := strings.NewReplacer(`\n`, "\n", `\r`, "\r").Replace(c.String("agent-send"))
	return &state.Agent{Port: uint16(c.Uint("agent-port")), Interval: state.Duration(c.Duration("agent-interval")), Send: send}
}

// loadFromFlags is the --load-* flags' load metric, or nil.
func loadFromFlags(c *cli.Context) *state.Load {
	if !c.IsSet("load-metric") {
		return nil
	}
	return &state.Load{Metric: c.String("load-metric"), Target: c.Float64("load-target"), Interval: state.Duration(c.Duration("load-interval"))}
}
