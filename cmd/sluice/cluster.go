package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control/api"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "the cluster of active nodes on etcd: nodes, revisions, ring digests, coordinator",
		Subcommands: []*cli.Command{
			{
				Name: "status", Usage: "every live node's applied revision, ring digests and health view, and the coordinator",
				Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/cluster", func(st api.ClusterStatus) error { return printClusterStatus(c.App.Writer, st) })
				},
			},
		},
	}
}

func printClusterStatus(w io.Writer, st api.ClusterStatus) error {
	if st.Store != "etcd" {
		_, err := fmt.Fprintf(w, "store %s: not part of a cluster (revision %d)\n", st.Store, st.Revision)
		return err
	}
	store := "up"
	if !st.StoreUp {
		store = "UNREACHABLE since " + st.StoreDownSince
	}
	coord := st.Coordinator
	if coord == "" {
		coord = "-"
	}
	fmt.Fprintf(w, "cluster %s  store etcd %s  revision %d  coordinator %s  quorum %s\n", st.Cluster, store, st.Revision, coord, st.Quorum)
	if st.StateRefused != "" {
		fmt.Fprintf(w, "state in etcd REFUSED: %s (this node forwards the last good one)\n", st.StateRefused)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "NODE\tADDR\tAPPLIED\tLAST SEEN\tRINGS (VIP=SHA256[:12])\tDOWN (VIP BACKEND)")
	for _, n := range st.Nodes {
		var rings, down []string
		for vip, d := range n.RingSHA256 {
			rings = append(rings, vip+"="+d[:min(12, len(d))])
		}
		for vip, bs := range n.Health {
			for b, h := range bs {
				switch h {
				case "up":
				case "undecided": // its check has not reached a first verdict there: no vote
					down = append(down, vip+" "+b+" (undecided)")
				default:
					down = append(down, vip+" "+b)
				}
			}
		}
		sort.Strings(rings)
		sort.Strings(down)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", n.Name, n.Addr, n.AppliedRevision, n.LastSeen, dash(strings.Join(rings, " ")), dash(strings.Join(down, ", ")))
	}
	return tw.Flush()
}
