package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/sluicelb/sluice/cmd/sluice/internal/lab"
	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/urfave/cli/v2"
)

func labCommand() *cli.Command {
	return &cli.Command{
		Name:  "lab",
		Usage: "a throwaway lab on this host: a client, the LB with the daemon, and backends, in network namespaces",
		Subcommands: []*cli.Command{
			{
				Name: "up", Usage: "build the lab and start the daemon in it",
				Flags: []cli.Flag{&cli.IntFlag{Name: "backends", Value: 3, Usage: "number of backends (1 to 8)"},
					&cli.BoolFlag{Name: "pair", Usage: "two LB nodes, lb and lb2, as an active/standby pair"},
					&cli.IntFlag{Name: "cluster", Usage: "N active LB nodes (2 to 5), lb…lbN, sharing their state in a three-member etcd cluster and announcing the VIPs over BGP to a BIRD router that spreads the client's traffic over them by ECMP (needs etcd-server and bird2)"}},
				Action: func(c *cli.Context) error {
					n := c.Int("backends")
					if n < 1 || n > 8 {
						return fmt.Errorf("--backends %d: want 1 to 8", n)
					}
					nodes := c.Int("cluster")
					if c.IsSet("cluster") && (nodes < 2 || nodes > 5) {
						return fmt.Errorf("--cluster %d: want 2 to 5 nodes", nodes)
					}
					if nodes > 0 && c.Bool("pair") {
						return errors.New("--pair and --cluster: a lab is one or the other")
					}
					if _, err := exec.LookPath(netlab.EtcdBinary); nodes > 0 && err != nil {
						return errors.New("--cluster: etcd is missing (apt-get install etcd-server)")
					}
					if _, err := exec.LookPath(netlab.BIRDBinary); nodes > 0 && err != nil {
						return errors.New("--cluster: BIRD is missing (apt-get install bird2)")
					}
					return lab.Up(c.Context, c.App.Writer, n, c.Bool("pair"), nodes)
				},
			},
			{
				Name: "run", Hidden: true, Usage: "(internal) build and hold the lab until signalled",
				Flags: []cli.Flag{&cli.IntFlag{Name: "backends", Value: 3}, &cli.BoolFlag{Name: "pair"}, &cli.IntFlag{Name: "cluster"}},
				Action: func(c *cli.Context) error {
					err := lab.Run(c.Int("backends"), c.Bool("pair"), c.Int("cluster"))
					if err != nil {
						// `lab up` reads this: the log goes with the lab directory.
						fmt.Println("ERROR " + strings.ReplaceAll(err.Error(), "\n", " | "))
					}
					return err
				},
			},
			{
				Name: "down", Usage: "remove the lab: namespaces, links, pinned objects and processes",
				Action: func(c *cli.Context) error { return lab.Down(c.App.Writer) },
			},
			{
				Name: "status", Usage: "show the lab's hosts and the daemon's view",
				Action: func(c *cli.Context) error { return lab.Status(c.Context, c.App.Writer) },
			},
			{
				Name: "exec", Usage: "run a command on a lab host", ArgsUsage: "HOST -- COMMAND [ARG...]",
				SkipFlagParsing: true,
				Action:          labExec,
			},
			{
				Name: "model", Usage: "set what a backend's model server reports: its agent's answer, its queue gauge, its gRPC health",
				ArgsUsage: "BACKEND",
				Flags: []cli.Flag{&cli.StringFlag{Name: "agent", Usage: "the agent's answer, e.g. 50%, drain, down, up, ready (sent as is: a malformed one is refused by the daemon)"},
					&cli.Float64Flag{Name: "queue", Usage: fmt.Sprintf("the queue gauge (the lab's load target is %d)", lab.ModelTarget)},
					&cli.StringFlag{Name: "grpc", Usage: "serving or not-serving"}},
				Action: labModel,
			},
			{
				Name: "fault", Usage: "inject a fault: a backend's servers killed (connections refused) or blackholed (packets dropped), or restored; an LB node's link down or up, its daemon killed (kill -9) or started again",
				ArgsUsage: "kill|blackhole|restore BACKEND | down|up|kill|start lbN",
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return errors.New("want: sluice lab fault kill|blackhole|restore BACKEND, or down|up|kill|start lbN")
					}
					return lab.Fault(c.Context, c.App.Writer, c.Args().Get(0), c.Args().Get(1))
				},
			},
		},
	}
}

// labExec runs a command in a lab host's network namespace.
func labExec(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) > 1 && args[1] == "--" {
		args = append(args[:1], args[2:]...)
	}
	if len(args) < 2 {
		return errors.New("want: sluice lab exec HOST -- COMMAND [ARG...]")
	}
	st, err := lab.ReadState()
	if err != nil {
		return errors.New("no lab is up (start one with: sluice lab up)")
	}
	h, ok := st.Host(args[0])
	if !ok {
		return fmt.Errorf("host %q: the lab has %s", args[0], lab.HostNames(st))
	}
	cmd := exec.CommandContext(c.Context, "nsenter", append([]string{"--net=/var/run/netns/" + h.NS, "--"}, args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.App.Writer, c.App.ErrWriter
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return cli.Exit("", ee.ExitCode())
		}
		return err
	}
	return nil
}

// labModel sets what a lab backend's model server reports.
func labModel(c *cli.Context) error {
	backend, err := oneArg(c, "BACKEND")
	if err != nil {
		return err
	}
	var ch lab.ModelChange
	if c.IsSet("agent") {
		ch.Agent = new(c.String("agent"))
	}
	if c.IsSet("queue") {
		ch.Queue = new(c.Float64("queue"))
	}
	ch.GRPC = c.String("grpc")
	return lab.SetModel(c.App.Writer, backend, ch)
}
