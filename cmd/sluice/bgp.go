package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/bgp"
)

// bgpFlags are the daemon's --bgp-* flags.
func bgpFlags() []cli.Flag {
	return []cli.Flag{
		&cli.UintFlag{Name: "bgp-asn", Usage: "BGP: this node's AS number; with --bgp-peer, announce the VIP addresses this node can serve"},
		&cli.StringSliceFlag{Name: "bgp-peer", Usage: "BGP: a router to dial, ADDR[:PORT]@ASN (repeatable); nothing listens on port 179"},
		&cli.StringFlag{Name: "bgp-router-id", Usage: "BGP: router id (default: the interface's first IPv4 address)"},
		&cli.DurationFlag{Name: "bgp-hold", Value: bgp.DefaultHold, Usage: "BGP: hold time (whole seconds, at least 3s); without BFD a dead node leaves the routers within it"},
		&cli.StringFlag{Name: "bgp-next-hop", Usage: "BGP: IPv4 next hop to announce (default: self, the session's own address)"},
		&cli.StringFlag{Name: "bgp-next-hop6", Usage: "BGP: IPv6 next hop for the /128 routes (default: over IPv6 sessions their own address; over IPv4 ones the interface's first IPv6 address)"},
		&cli.StringSliceFlag{Name: "bgp-community", Usage: "BGP: community to tag every route with, A:B or a well-known name (repeatable)"},
		&cli.BoolFlag{Name: "bgp-bfd", Usage: "BGP: run BFD with every router, so that a dead node leaves them within interval × multiplier"},
		&cli.DurationFlag{Name: "bgp-bfd-interval", Value: bgp.DefaultBFDInterval, Usage: "BGP: BFD transmit and receive interval"},
		&cli.IntFlag{Name: "bgp-bfd-multiplier", Value: bgp.DefaultBFDMultiplier, Usage: "BGP: BFD packets missed before the session is down"},
		&cli.DurationFlag{Name: "bgp-learn", Value: bgp.DefaultLearn, Usage: "BGP: announce nothing for this long after start (flow tables warm up)"},
		&cli.DurationFlag{Name: "bgp-drain", Value: bgp.DefaultDrain, Usage: "BGP: on SIGTERM, keep forwarding this long after the withdrawal, then detach"},
		&cli.BoolFlag{Name: "bgp-graceful-shutdown", Usage: "BGP: sluice node drain first tags the routes GRACEFUL_SHUTDOWN (RFC 8326) for the drain period"},
		&cli.UintFlag{Name: "bgp-max-prefixes", Value: bgp.DefaultMaxPrefixes, Usage: "BGP: routes of a family a router may send (all are refused on import) before its session is shut down"},
		&cli.StringFlag{Name: "bgp-password", EnvVars: []string{"SLUICE_BGP_PASSWORD"}, Usage: "BGP: TCP MD5 password of every session (RFC 2385; at most 80 bytes); prefer the environment variable, which ps does not show"},
	}
}

var bgpFlagNames = []string{"bgp-router-id", "bgp-next-hop", "bgp-next-hop6", "bgp-community", "bgp-bfd", "bgp-graceful-shutdown", "bgp-max-prefixes", "bgp-password"}

// bgpOptions reads the --bgp-* flags; without --bgp-asn and --bgp-peer
// the daemon announces nothing.
func bgpOptions(c *cli.Context) (*bgp.Config, error) {
	if !c.IsSet("bgp-asn") && len(c.StringSlice("bgp-peer")) == 0 {
		for _, f := range bgpFlagNames {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s: needs --bgp-asn and --bgp-peer", f)
			}
		}
		return nil, nil
	}
	if c.Uint("bgp-asn") > 4294967294 {
		return nil, fmt.Errorf("--bgp-asn %d: want 1..4294967294", c.Uint("bgp-asn"))
	}
	cfg := &bgp.Config{ASN: uint32(c.Uint("bgp-asn")), Hold: c.Duration("bgp-hold"), BFD: c.Bool("bgp-bfd"),
		BFDInterval: c.Duration("bgp-bfd-interval"), BFDMultiplier: c.Int("bgp-bfd-multiplier"), Learn: c.Duration("bgp-learn"),
		Drain: c.Duration("bgp-drain"), GracefulShutdown: c.Bool("bgp-graceful-shutdown"), Password: c.String("bgp-password")}
	n := c.Uint("bgp-max-prefixes")
	if n == 0 || n > 1<<24 {
		return nil, fmt.Errorf("--bgp-max-prefixes %d: want 1..%d", n, 1<<24)
	}
	cfg.MaxPrefixes = uint32(n)
	for _, s := range c.StringSlice("bgp-peer") {
		p, err := bgp.ParsePeer(s)
		if err != nil {
			return nil, err
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	for _, s := range c.StringSlice("bgp-community") {
		v, err := bgp.ParseCommunity(s)
		if err != nil {
			return nil, err
		}
		cfg.Communities = append(cfg.Communities, v)
	}
	for name, dst := range map[string]*netip.Addr{"bgp-router-id": &cfg.RouterID, "bgp-next-hop": &cfg.NextHop, "bgp-next-hop6": &cfg.NextHop6} {
		if s := c.String(name); s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("--%s %q: not an IP address", name, s)
			}
			*dst = a
		}
	}
	return cfg, cfg.Complete()
}

func bgpCommand() *cli.Command {
	return &cli.Command{
		Name:  "bgp",
		Usage: "the routes this node announces to its routers",
		Subcommands: []*cli.Command{{
			Name: "status", Usage: "peers, announced and withheld routes, and each service's verdict",
			Flags: []cli.Flag{socketFlag(), outputFlag()},
			Action: func(c *cli.Context) error {
				return show(c, "/v1/bgp", func(st api.BGPStatus) error { return printBGPStatus(c.App.Writer, st) })
			},
		}},
	}
}

func nodeCommand() *cli.Command {
	action := func(path, done string) cli.ActionFunc {
		return func(c *cli.Context) error {
			return call(c, func(cl *client) (api.BGPStatus, error) {
				var st api.BGPStatus
				err := cl.do(c.Context, "POST", path, nil, struct{}{}, &st)
				return st, err
			}, func(st api.BGPStatus) error {
				_, err := fmt.Fprintf(c.App.Writer, "%s; announced: %s\n", done, dash(strings.Join(st.Announced, " ")))
				return err
			})
		}
	}
	return &cli.Command{
		Name:  "node",
		Usage: "take this node out of the routers' ECMP set and back",
		Subcommands: []*cli.Command{
			{Name: "drain", Usage: "withdraw every route (the data plane keeps forwarding); returns once the routers were sent the withdrawals",
				Flags: []cli.Flag{socketFlag(), outputFlag()}, Action: action("/v1/node/drain", "drained: every route withdrawn")},
			{Name: "undrain", Usage: "announce again what the rules allow", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: action("/v1/node/undrain", "undrained")},
		},
	}
}

func printBGPStatus(w io.Writer, st api.BGPStatus) error {
	if !st.Enabled {
		_, err := fmt.Fprintln(w, "bgp: off (start the daemon with --bgp-asn and --bgp-peer)")
		return err
	}
	fmt.Fprintf(w, "asn %d  router id %s  draining %v\n", st.ASN, st.RouterID, st.Draining)
	tw := newTable(w)
	fmt.Fprintln(tw, "PEER\tASN\tSTATE\tUPTIME\tBFD")
	for _, p := range st.Peers {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", p.Addr, p.ASN, p.State, dash(p.Uptime), p.BFD)
	}
	tw.Flush()
	fmt.Fprintf(w, "announced: %s\n", dash(strings.Join(st.Announced, " ")))
	var held []string
	for r, why := range st.Withheld {
		held = append(held, r+" ("+why+")")
	}
	sort.Strings(held)
	fmt.Fprintf(w, "withheld: %s\n", dash(strings.Join(held, ", ")))
	tw = newTable(w)
	fmt.Fprintln(tw, "SERVICE\tSERVICEABLE\tUSABLE/MIN\tREASON")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s\t%v\t%d/%d\t%s\n", s.VIP, s.Serviceable, s.Usable, s.MinActive, dash(s.Reason))
	}
	return tw.Flush()
}
