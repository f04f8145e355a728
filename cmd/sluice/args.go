package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluicelb/sluice/control/state"
	"github.com/urfave/cli/v2"
)

// interspersed moves a leaf command's flags in front of its positional
// arguments, so that `sluice vip add 10.0.0.1:80/tcp --forward dsr` works
// as the synopsis reads (urfave/cli v2 stops parsing flags at the first
// positional argument).
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	cmds := app.Commands
	var leaf *cli.Command
	i := 1
	for ; i < len(args); i++ {
		var found *cli.Command
		for _, c := range cmds {
			if c.HasName(args[i]) {
				found = c
			}
		}
		if found == nil {
			break
		}
		out = append(out, args[i])
		leaf, cmds = found, found.Subcommands
	}
	if leaf == nil || len(leaf.Subcommands) > 0 || leaf.SkipFlagParsing {
		return args
	}
	boolFlag := map[string]bool{}
	for _, f := range leaf.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			boolFlag[n] = isBool
		}
	}
	var flags, pos []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if isBool, known := boolFlag[name]; known && !isBool && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	out = append(out, flags...)
	if len(pos) > 0 {
		out = append(out, "--")
		out = append(out, pos...)
	}
	return out
}

func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("want one argument: %s", what)
	}
	return c.Args().First(), nil
}

// vipArg is a command's one argument, a VIP.
func vipArg(c *cli.Context) (string, error) {
	vip, err := oneArg(c, "ADDR:PORT/PROTO")
	if err != nil {
		return "", err
	}
	if _, err := state.ParseVIPKey(vip); err != nil {
		return "", err
	}
	return vip, nil
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
