package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
)

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
		tw := newTable(w)
		fmt.Fprintln(tw, "  BACKEND\tSTATE\tWEIGHT\tSTANDBY\tSLOTS\tPACKETS\tBYTES\tLAST CHANGE\tREASON")
		for _, b := range v.Backends {
			lc := "-"
			if !b.LastChange.IsZero() {
				lc = b.LastChange.Format(time.RFC3339)
			}
			// Reasons are printed escaped: an older daemon may pass on what a
			// backend said as it was.
			weight, reason := strconv.Itoa(int(b.Weight)), health.CleanReason(b.Reason)
			if b.EffectiveWeight != float64(b.Weight) && b.State == "up" {
				weight += "→" + strconv.FormatFloat(b.EffectiveWeight, 'g', 3, 64)
			}
			if b.WeightReason != "" && b.WeightReason != b.Reason {
				reason += "; weight: " + health.CleanReason(b.WeightReason)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%v\t%d\t%d\t%d\t%s\t%s\n", b.Addr, b.State, weight, b.Standby, b.RingSlots, b.Packets, b.Bytes, lc, reason)
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
				rates := api.Rates(prev, cur, c.Duration("every"))
				if err := output(c, asJSON, rates, func(rs []api.Rate) error { return printRates(c.App.Writer, rs) }); err != nil {
					return err
				}
				prev = cur
				if !c.Bool("watch") {
					return nil
				}
			}
		},
	}
}

func printRates(w io.Writer, rates []api.Rate) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "VIP\tBACKEND\tSTATE\tPPS\tBPS\tSHARE")
	for _, r := range rates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t%s\n", r.VIP, r.Backend, r.State, r.PPS, r.BPS, api.ShareBar(r.Share))
	}
	return tw.Flush()
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
					line += ": " + health.CleanReason(e.Reason)
				}
				_, perr = fmt.Fprintln(c.App.Writer, line)
				return perr == nil
			})
			return errors.Join(err, perr)
		},
	}
}
