package main

import (
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/loader"
)

func decapCommand() *cli.Command {
	iface := &cli.StringFlag{Name: "iface", Usage: "backend interface that receives encapsulated traffic", Required: true}
	pinRoot := &cli.StringFlag{Name: "pin-root", Value: loader.DefaultPinRoot, Usage: "bpffs directory to pin under"}
	return &cli.Command{
		Name:  "decap",
		Usage: "on a backend host: strip IPIP/IP6IP6 addressed to it (pinned, outlives the command)",
		Subcommands: []*cli.Command{
			{
				Name:  "attach",
				Usage: "attach the decap program to --iface",
				Flags: []cli.Flag{
					iface, pinRoot,
					&cli.StringFlag{Name: "xdp-mode", Value: "auto", Usage: "native, generic or auto"},
					&cli.StringSliceFlag{Name: "addr", Usage: "outer destination to decapsulate (default: every address of --iface)"},
				},
				Action: func(c *cli.Context) error {
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
					d, err := loader.AttachDecap(c.Context, loader.DecapOptions{Iface: c.String("iface"), Mode: mode, Addrs: addrs, PinRoot: c.String("pin-root")})
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "decap attached to %s (pinned; detach with: sluice decap detach --iface %s)\n", c.String("iface"), c.String("iface"))
					return d.Close()
				},
			},
			{
				Name:  "detach",
				Usage: "remove the decap program from --iface",
				Flags: []cli.Flag{iface, pinRoot},
				Action: func(c *cli.Context) error {
					if err := loader.DetachDecap(c.String("iface"), c.String("pin-root")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "decap detached from %s\n", c.String("iface"))
					return nil
				},
			},
		},
	}
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
