package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/availability"
	"github.com/sluicelb/sluice/control/state"
)

func promoteCommand() *cli.Command {
	return &cli.Command{
		Name: "promote", Usage: "planned switchover: make ADDR the primary of a failover VIP", ArgsUsage: "VIP ADDR",
		Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			vip, addr, err := vipAndAddr(c)
			if err != nil {
				return err
			}
			return call(c, func(cl *client) (api.PromoteResult, error) {
				var res api.PromoteResult
				err := cl.do(c.Context, "POST", "/v1/promote", nil, api.PromoteRequest{VIP: vip, Addr: addr}, &res)
				return res, err
			}, func(res api.PromoteResult) error {
				_, err := fmt.Fprintf(c.App.Writer, "%s is the primary of %s (epoch %d, was %s; hook took %s)\n", res.NewPrimary, res.VIP, res.Epoch, res.OldPrimary, res.HookTime)
				return err
			})
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
	tw := newTable(w)
	fmt.Fprintln(tw, "VIP / BACKEND\tNEEDS\tWINDOW\tMEASURED\tNINES\tMODELLED\tNINES")
	for _, v := range rep.VIPs {
		for _, w := range availability.Windows {
			m, ok := v.Measured[w.Name]
			if !ok {
				continue
			}
			fmt.Fprintf(tw, "%s\t%d of %d\t%s\t%.6f\t%.2f\t%.6f\t%.2f\n", v.VIP, v.Need, v.Of, w.Name,
				m, availability.Nines(m), v.Modelled[w.Name], availability.Nines(v.Modelled[w.Name]))
		}
		for _, b := range v.Backends {
			if m, ok := b.Measured["all"]; ok {
				fmt.Fprintf(tw, "  %s\t\tall\t%.6f\t%.2f\t\t\n", b.Addr, m, availability.Nines(m))
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
					if _, err := state.ParseVIPKey(c.String("vip")); err != nil {
						return fmt.Errorf("--vip: %w", err)
					}
					if c.Duration("hold") <= 0 || c.Duration("max-apply") <= 0 {
						return fmt.Errorf("--hold and --max-apply must be positive")
					}
					req := api.DrillRequest{VIP: c.String("vip"), Action: c.String("action"), Addr: c.Args().First(),
						Hold: c.Duration("hold").String(), MaxApply: c.Duration("max-apply").String()}
					var rep api.DrillReport
					err := call(c, func(cl *client) (api.DrillReport, error) {
						err := cl.do(c.Context, "POST", "/v1/drills", nil, req, &rep)
						if f := c.String("report"); err == nil && f != "" {
							raw, _ := json.MarshalIndent(rep, "", "  ")
							err = state.WriteFileAtomic(f, append(raw, '\n'), 0o600)
						}
						return rep, err
					}, func(rep api.DrillReport) error { return printDrill(c.App.Writer, rep) })
					if err == nil && !rep.Pass && c.String("output") != "json" {
						return cli.Exit("", 1)
					}
					return err
				},
			},
			{
				Name: "list", Usage: "list past drill reports", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/drills", func(reps []api.DrillReport) error {
						tw := newTable(c.App.Writer)
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

func printDrill(w io.Writer, r api.DrillReport) error {
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
	tw := newTable(w)
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
	return nil
}
