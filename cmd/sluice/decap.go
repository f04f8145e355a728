package main

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/loader/decap"
)

func decapCommand() *cli.Command {
	iface := &cli.StringFlag{Name: "iface", Usage: "backend interface that receives encapsulated traffic", Required: true}
	pinRoot := &cli.StringFlag{Name: "pin-root", Value: loader.DefaultPinRoot, Usage: "bpffs directory to pin under"}
	return &cli.Command{
		Name:  "decap",
		Usage: "on a backend host: strip IPIP/IP6IP6 and GUE addressed to it (pinned, outlives the command)",
		Subcommands: []*cli.Command{
			{
				Name:  "attach",
				Usage: "attach the decap program to --iface (again: replace its addresses and allow list)",
				Flags: []cli.Flag{
					iface, pinRoot,
					&cli.StringFlag{Name: "xdp-mode", Value: "auto", Usage: "native, generic or auto"},
					&cli.StringSliceFlag{Name: "addr", Usage: "outer destination to decapsulate (default: every address of --iface)"},
					&cli.StringSliceFlag{Name: "allow-from", Usage: "outer source PREFIX to accept, besides the subnets of --iface and sluice's default outer sources 172.16.0.0/16 and fd00:5:1ce::/96 (repeatable)"},
					&cli.BoolFlag{Name: "allow-only", Usage: "accept the --allow-from prefixes alone, without the defaults"},
					&cli.StringSliceFlag{Name: "gue-port", Usage: fmt.Sprintf("UDP port on which GUE (variant 1) arrives, e.g. %d: every datagram to it from an allowed source is decapsulated, the others dropped (repeatable; default none)", loader.DefaultGUEPort)},
				},
				Action: decapAttach,
			},
			{
				Name:   "status",
				Usage:  "show the decap program's counters and outer-source allow list for --iface",
				Flags:  []cli.Flag{iface, pinRoot, outputFlag()},
				Action: decapStatus,
			},
			{
				Name:  "detach",
				Usage: "remove the decap program from --iface",
				Flags: []cli.Flag{iface, pinRoot},
				Action: func(c *cli.Context) error {
					if err := decap.Detach(c.String("iface"), c.String("pin-root")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "decap detached from %s\n", c.String("iface"))
					return nil
				},
			},
		},
	}
}

func decapAttach(c *cli.Context) error {
	mode, err := loader.ParseMode(c.String("xdp-mode"))
	if err != nil {
		return fmt.Errorf("--xdp-mode: %w", err)
	}
	var addrs []netip.Addr
	for _, s := range c.StringSlice("addr") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("--addr %q: not an IP address", s)
		}
		addrs = append(addrs, a)
	}
	var allow []netip.Prefix
	for _, s := range c.StringSlice("allow-from") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				p, err = a.Unmap().Prefix(a.Unmap().BitLen())
			}
		}
		if err != nil {
			return fmt.Errorf("--allow-from %q: not a prefix (ADDR/BITS) or an address", s)
		}
		allow = append(allow, p)
	}
	var gue []uint16
	for _, s := range c.StringSlice("gue-port") {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("--gue-port %q: want a port 1-65535", s)
		}
		gue = append(gue, uint16(p))
	}
	if c.Bool("allow-only") && len(allow) == 0 {
		return fmt.Errorf("--allow-only: needs at least one --allow-from, or every encapsulated packet is refused")
	}
	d, err := decap.Attach(c.Context, decap.Options{Iface: c.String("iface"), Mode: mode, Addrs: addrs,
		AllowFrom: allow, AllowOnly: c.Bool("allow-only"), GUEPorts: gue, PinRoot: c.String("pin-root")})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "decap attached to %s (pinned; detach with: sluice decap detach --iface %s)\n", c.String("iface"), c.String("iface"))
	return d.Close()
}

// decapReport is what `sluice decap status` prints.
type decapReport struct {
	Iface     string         `json:"iface"`
	AllowFrom []netip.Prefix `json:"allow_from"`
	GUEPorts  []uint16       `json:"gue_ports"`
	Counters  decap.Counters `json:"counters"`
}

func decapStatus(c *cli.Context) error {
	asJSON, err := wantJSON(c)
	if err != nil {
		return err
	}
	d, err := decap.Open(c.String("iface"), c.String("pin-root"))
	if err != nil {
		return err
	}
	defer d.Close()
	r := decapReport{Iface: c.String("iface")}
	if r.Counters, err = d.Counters(); err != nil {
		return err
	}
	if r.AllowFrom, err = d.Allowed(); err != nil {
		return err
	}
	if r.GUEPorts, err = d.GUEPorts(); err != nil {
		return err
	}
	return output(c, asJSON, r, func(r decapReport) error {
		w := newTable(c.App.Writer)
		fmt.Fprintf(w, "decapsulated\t%d packets\t%d bytes\n", r.Counters.Decapsulated.Packets, r.Counters.Decapsulated.Bytes)
		fmt.Fprintf(w, "passed\t%d packets\t%d bytes\n", r.Counters.Passed.Packets, r.Counters.Passed.Bytes)
		fmt.Fprintf(w, "refused\t%d packets\t%d bytes\n", r.Counters.Refused.Packets, r.Counters.Refused.Bytes)
		for _, p := range r.AllowFrom {
			fmt.Fprintf(w, "allow-from\t%s\t\n", p)
		}
		for _, p := range r.GUEPorts {
			fmt.Fprintf(w, "gue-port\t%d\t\n", p)
		}
		return w.Flush()
	})
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:  "detach",
		Usage: "remove the load balancer a stopped daemon left attached to --iface (forwarding stops)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "iface", Usage: "interface the daemon was attached to", Required: true},
			&cli.StringFlag{Name: "pin-root", Value: loader.DefaultPinRoot, Usage: "bpffs directory the daemon pinned under"},
		},
		Action: func(c *cli.Context) error {
			if err := loader.DetachPinned(c.String("iface"), c.String("pin-root")); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "sluice detached from %s\n", c.String("iface"))
			return nil
		},
	}
}
