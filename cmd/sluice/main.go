// Command sluice is the kernel-accelerated L4 load balancer.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set by the build (-ldflags -X main.version=...).
var version = "dev"

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return version
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := &cli.App{
		Name:    "sluice",
		Usage:   "kernel-accelerated L4 load balancer (XDP, Maglev)",
		Version: buildVersion(),
		Commands: []*cli.Command{
			daemonCommand(),
			vipCommand(),
			backendCommand(),
			promoteCommand(),
			availabilityCommand(),
			drillCommand(),
			statusCommand(),
			haCommand(),
			clusterCommand(),
			bgpCommand(),
			nodeCommand(),
			statsCommand(),
			eventsCommand(),
			applyCommand(),
			exportCommand(),
			backupCommand(),
			decapCommand(),
			captureCommand(),
			detachCommand(),
			labCommand(),
			demoCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "sluice", buildVersion())
					return nil
				},
			},
		},
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err := app.RunContext(ctx, interspersed(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "sluice:", err)
		os.Exit(1)
	}
}
