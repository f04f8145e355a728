package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
)

func haCommand() *cli.Command {
	return &cli.Command{
		Name:  "ha",
		Usage: "the LB pair: role, peers, sync, planned failover",
		Subcommands: []*cli.Command{
			{
				Name: "status", Usage: "role, peers, advert age, revisions and flow sync lag", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/ha/status", func(st api.HAStatus) error { return printHAStatus(c.App.Writer, st) })
				},
			},
			{
				Name: "failover", Usage: "planned handoff: the master steps down and the peer takes over at once", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return call(c, func(cl *client) (api.HAStatus, error) {
						var st api.HAStatus
						err := cl.do(c.Context, "POST", "/v1/ha/failover", nil, struct{}{}, &st)
						return st, err
					}, func(st api.HAStatus) error {
						_, err := fmt.Fprintf(c.App.Writer, "stepped down: this node is now %s; the peer takes over\n", st.Role)
						return err
					})
				},
			},
		},
	}
}

func printHAStatus(w io.Writer, st api.HAStatus) error {
	if !st.Enabled {
		fmt.Fprintf(w, "not part of an LB pair (role %s, revision %d)\n", st.Role, st.Revision)
		return nil
	}
	role := st.Role
	if st.Fault {
		role += " (fault: interface down)"
	}
	if st.DualMaster {
		role += " (DUAL MASTER)"
	}
	fmt.Fprintf(w, "node %s  role %s  priority %d  preempt %v  advert %s  master-down %s\n", st.Node, role, st.Priority, st.Preempt, st.Advert, st.MasterDown)
	lag := st.SyncLag
	if lag == "" {
		lag = "-"
	}
	fmt.Fprintf(w, "revision %d  synced %v  flow sync lag %s\n", st.Revision, st.Synced, lag)
	tw := newTable(w)
	fmt.Fprintln(tw, "PEER\tNODE\tROLE\tUP\tADVERT AGE\tREVISION")
	for _, p := range st.Peers {
		rev := fmt.Sprint(p.Revision)
		if !p.RevisionOK {
			rev += " (differs)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", p.Addr, dash(p.Node), dash(p.Role), p.Up, dash(p.AdvertAge), rev)
	}
	tw.Flush()
	if len(st.BadAdverts) > 0 {
		fmt.Fprintf(w, "refused adverts: %v\n", st.BadAdverts)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
