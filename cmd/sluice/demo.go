package main

import (
	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/cmd/sluice/internal/demo"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "a guided tour in a throwaway lab: the daemon, health checks, failover, surviving flows, a drain, slow start, an overloaded backend (needs root)",
		Action: func(c *cli.Context) error {
			return demo.Run(c.Context, c.App.Writer)
		},
	}
}
