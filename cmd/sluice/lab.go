package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv"
)

const labPrefix = "sluicelab"

var labDir = "/run/sluice-lab"

func labStatePath() string { return filepath.Join(labDir, "lab.json") }

type labHost struct {
	Name  string `json:"name"`
	NS    string `json:"netns"`
	Link  string `json:"link"`
	Addr  string `json:"addr"`
	Addr6 string `json:"addr6,omitempty"`
}

type labState struct {
	ID        string    `json:"id"`
	PinRoot   string    `json:"pin_root"`
	Socket    string    `json:"socket"`
	RunnerPID int       `json:"runner_pid"`
	DaemonPID int       `json:"daemon_pid,omitempty"`
	Hosts     []labHost `json:"hosts"`
	VIPs      []string  `json:"vips"`
	Ready     bool      `json:"ready"`
}

func readLabState() (*labState, error) {
	raw, err := os.ReadFile(labStatePath())
	if err != nil {
		return nil, err
	}
	var st labState
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", labStatePath(), err)
	}
	return &st, nil
}

func (s *labState) write() error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return control.WriteFileAtomic(labStatePath(), raw, 0o600)
}

func (s *labState) host(name string) (labHost, bool) {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return labHost{}, false
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

var labVIPs = []struct {
	vip   string
	args  []string
	check []string
}{
	{"10.77.1.100:80/tcp", []string{"--forward", "ipip"}, []string{"--check", "http", "--check-path", "/"}},
	{"10.77.1.100:7/tcp", []string{"--forward", "ipip"}, []string{"--check", "tcp"}},
	{"10.77.1.100:53/udp", []string{"--forward", "dsr"}, []string{"--check", "udp"}},
}

func labCommand() *cli.Command {
	return &cli.Command{
		Name:  "lab",
		Usage: "a throwaway lab on this host: a client, the LB with the daemon, and backends, in network namespaces",
		Subcommands: []*cli.Command{
			{
				Name: "up", Usage: "build the lab and start the daemon in it",
				Flags: []cli.Flag{&cli.IntFlag{Name: "backends", Value: 3, Usage: "number of backends (1 to 8)"}},
				Action: func(c *cli.Context) error {
					n := c.Int("backends")
					if n < 1 || n > 8 {
						return fmt.Errorf("--backends %d: want 1 to 8", n)
					}
					return labUp(c.Context, c.App.Writer, n)
				},
			},
			{
				Name: "run", Hidden: true, Usage: "(internal) build and hold the lab until signalled",
				Flags:  []cli.Flag{&cli.IntFlag{Name: "backends", Value: 3}},
				Action: func(c *cli.Context) error { return labRun(c.Int("backends")) },
			},
			{
				Name: "down", Usage: "remove the lab: namespaces, links, pinned objects and processes",
				Action: func(c *cli.Context) error { return labDown(c.App.Writer) },
			},
			{
				Name: "status", Usage: "show the lab's hosts and the daemon's view",
				Action: func(c *cli.Context) error { return labStatus(c) },
			},
			{
				Name: "exec", Usage: "run a command on a lab host", ArgsUsage: "HOST -- COMMAND [ARG...]",
				SkipFlagParsing: true,
				Action: func(c *cli.Context) error {
					args := c.Args().Slice()
					if len(args) > 1 && args[1] == "--" {
						args = append(args[:1], args[2:]...)
					}
					if len(args) < 2 {
						return errors.New("want: sluice lab exec HOST -- COMMAND [ARG...]")
					}
					st, err := readLabState()
					if err != nil {
						return errors.New("no lab is up (start one with: sluice lab up)")
					}
					h, ok := st.host(args[0])
					if !ok {
						return fmt.Errorf("host %q: the lab has %s", args[0], hostNames(st))
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
				},
			},
			{
				Name: "fault", Usage: "inject a fault: kill (connections refused), blackhole (packets dropped), restore",
				ArgsUsage: "kill|blackhole|restore BACKEND",
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return errors.New("want: sluice lab fault kill|blackhole|restore BACKEND")
					}
					return labFault(c.Context, c.App.Writer, c.Args().Get(0), c.Args().Get(1))
				},
			},
		},
	}
}

func hostNames(st *labState) string {
	var names []string
	for _, h := range st.Hosts {
		names = append(names, h.Name)
	}
	return strings.Join(names, ", ")
}

// labUp starts the lab runner in the background and waits until it is ready.
func labUp(ctx context.Context, w io.Writer, backends int) error {
	if st, err := readLabState(); err == nil {
		if alive(st.RunnerPID) {
			return errors.New("a lab is already up (remove it with: sluice lab down)")
		}
		_ = labCleanup(st)
	}
	_ = testenv.RemoveWithPrefix(labPrefix + "-")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(labDir, 0o700); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(labDir, "runner.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "lab", "run", "--backends", fmt.Sprint(backends))
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not killed with our terminal
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	// The runner watches this pipe: if it closes before we confirm, this
	// command died half-way and the runner tears the lab down.
	confirm, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if sc.Text() == "READY" {
			st, err := readLabState()
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "lab %s is up: client, lb (sluice daemon, XDP), %d backends\n\n", st.ID, backends)
			fmt.Fprintf(w, "  sluice lab exec client -- curl -s http://10.77.1.100/\n")
			fmt.Fprintf(w, "  SLUICE_SOCKET=%s sluice status\n", st.Socket)
			fmt.Fprintf(w, "  sluice lab exec lb -- curl -s 127.0.0.1:9642/metrics\n")
			fmt.Fprintf(w, "  sluice lab fault kill b1    # then: sluice lab fault restore b1\n")
			fmt.Fprintf(w, "  sluice lab down\n")
			_, err = io.WriteString(confirm, "OK\n")
			return err
		}
	}
	err = cmd.Wait()
	raw, _ := os.ReadFile(filepath.Join(labDir, "runner.log"))
	return fmt.Errorf("lab did not come up: %v\n%s", err, raw)
}

// labRun builds the lab, runs the daemon in the LB namespace and holds
// everything until SIGTERM or SIGINT, then removes it all.
func labRun(backends int) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	// `lab up` confirms on stdin once it has reported the lab; end of
	// input before that means it died, and the lab goes with it.
	confirmed := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		confirmed <- line == "OK\n"
	}()
	ctx := context.Background()
	lab, err := testenv.NewLab(ctx, nil, testenv.LabOptions{Backends: backends, Prefix: labPrefix})
	if err != nil {
		return err
	}
	st := &labState{ID: lab.ID(), PinRoot: lab.PinRoot(), Socket: filepath.Join(labDir, "sluice.sock"), RunnerPID: os.Getpid()}
	for _, h := range append([]*testenv.Host{lab.Client, lab.LB}, backendHosts(lab)...) {
		lh := labHost{Name: h.Name, NS: h.NSName(), Link: h.Link, Addr: h.Addr.Addr().String()}
		if h.Addr6.IsValid() {
			lh.Addr6 = h.Addr6.Addr().String()
		}
		st.Hosts = append(st.Hosts, lh)
	}
	var daemon *labDaemon
	teardown := func() {
		daemon.stop()
		_ = loader.DetachPinned(lab.LB.Link, lab.PinRoot())
		_ = lab.Close()
		_ = testenv.RemoveWithPrefix(labPrefix + "-" + lab.ID())
		os.RemoveAll(labDir)
	}
	if err := st.write(); err != nil {
		teardown()
		return err
	}
	daemon, err = startLabDaemon(lab, labDir, "127.0.0.1:9642")
	if err != nil {
		teardown()
		return err
	}
	st.Socket = daemon.socket
	st.DaemonPID = daemon.cmd.Process.Pid
	if err := st.write(); err != nil {
		teardown()
		return err
	}
	setup := func() error {
		cl := daemon.client
		if err := daemon.wait(ctx, 20*time.Second); err != nil {
			return err
		}
		deadline := time.Now().Add(20 * time.Second)
		for _, v := range labVIPs {
			fwd := v.args[1]
			k, _ := control.ParseVIPKey(v.vip)
			if err := cl.do(ctx, "POST", "/v1/vips", nil, control.VIPAddRequest{VIP: v.vip, Forward: fwd}, nil); err != nil {
				return err
			}
			st.VIPs = append(st.VIPs, v.vip)
			for _, b := range lab.Backends {
				be := control.Backend{Addr: b.Addr.Addr().String(), Weight: 1, Check: control.Check{
					Type: v.check[1], Path: "/", Interval: control.Duration(200 * time.Millisecond),
					Timeout: control.Duration(200 * time.Millisecond), Rise: 2, Fall: 2}}
				if k.Proto != loader.TCP || v.check[1] != "http" {
					be.Check.Path = ""
				}
				if err := cl.do(ctx, "POST", "/v1/backends", nil, control.BackendAddRequest{VIP: v.vip, Backend: be}, nil); err != nil {
					return err
				}
			}
		}
		for {
			var s control.Status
			if err := cl.do(ctx, "GET", "/v1/status", nil, nil, &s); err != nil {
				return err
			}
			up := 0
			for _, v := range s.VIPs {
				for _, b := range v.Backends {
					if b.State == "up" {
						up++
					}
				}
			}
			if up == len(labVIPs)*len(lab.Backends) {
				return nil
			}
			if time.Now().After(deadline) {
				return errors.New("backends did not come up")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- setup() }()
	select {
	case sig := <-sigs:
		teardown()
		return fmt.Errorf("interrupted by %v while starting", sig)
	case <-confirmed:
		teardown()
		return errors.New("sluice lab up went away while starting")
	case err := <-errc:
		if err != nil {
			teardown()
			return err
		}
	}
	st.Ready = true
	if err := st.write(); err != nil {
		teardown()
		return err
	}
	fmt.Println("READY")
	select {
	case sig := <-sigs:
		teardown()
		return fmt.Errorf("interrupted by %v while starting", sig)
	case ok := <-confirmed:
		if !ok {
			teardown()
			return errors.New("sluice lab up went away before reporting the lab")
		}
	}
	os.Stdout.Close()
	// The lab outlives `lab up` from here on, until `lab down`.
	<-sigs
	teardown()
	return nil
}

func backendHosts(lab *testenv.Lab) []*testenv.Host {
	var out []*testenv.Host
	for _, b := range lab.Backends {
		out = append(out, b.Host)
	}
	return out
}

// labCleanup removes whatever a lab left, whether or not its runner lives.
func labCleanup(st *labState) error {
	if st != nil {
		if alive(st.RunnerPID) {
			syscall.Kill(st.RunnerPID, syscall.SIGTERM)
			for i := 0; i < 200 && alive(st.RunnerPID); i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if alive(st.DaemonPID) {
			syscall.Kill(st.DaemonPID, syscall.SIGKILL)
			for i := 0; i < 100 && alive(st.DaemonPID); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if st.PinRoot != "" {
			for _, h := range st.Hosts {
				if h.Name == "lb" {
					_ = loader.DetachPinned(h.Link, st.PinRoot)
				}
			}
		}
	}
	err := testenv.RemoveWithPrefix(labPrefix + "-")
	os.RemoveAll(labDir)
	return err
}

func labDown(w io.Writer) error {
	st, err := readLabState()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		st = nil
	}
	if err := labCleanup(st); err != nil {
		return err
	}
	if left := testenv.LeftoversWithPrefix(labPrefix + "-"); len(left) > 0 {
		return fmt.Errorf("could not remove: %v", left)
	}
	fmt.Fprintln(w, "lab removed: no namespace, link, pinned object or process left")
	return nil
}

func labStatus(c *cli.Context) error {
	st, err := readLabState()
	if err != nil {
		fmt.Fprintln(c.App.Writer, "no lab is up (start one with: sluice lab up)")
		return nil
	}
	w := c.App.Writer
	fmt.Fprintf(w, "lab %s: runner pid %d (alive %v), daemon pid %d (alive %v), socket %s\n",
		st.ID, st.RunnerPID, alive(st.RunnerPID), st.DaemonPID, alive(st.DaemonPID), st.Socket)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tADDRESS\tIPV6\tNETNS")
	for _, h := range st.Hosts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Name, h.Addr, h.Addr6, h.NS)
	}
	tw.Flush()
	var s control.Status
	if err := newClientFor(st.Socket).do(c.Context, "GET", "/v1/status", nil, nil, &s); err != nil {
		return err
	}
	for _, v := range s.VIPs {
		var states []string
		for _, b := range v.Backends {
			states = append(states, b.Addr+"="+b.State)
		}
		fmt.Fprintf(w, "vip %s (%s): %s\n", v.VIP, v.Forward, strings.Join(states, " "))
	}
	return nil
}

func labFault(ctx context.Context, w io.Writer, kind, backend string) error {
	st, err := readLabState()
	if err != nil {
		return errors.New("no lab is up (start one with: sluice lab up)")
	}
	h, ok := st.host(backend)
	if !ok || !strings.HasPrefix(backend, "b") {
		return fmt.Errorf("backend %q: the lab's backends are %s", backend, strings.TrimPrefix(hostNames(st), "client, lb, "))
	}
	nft := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/var/run/netns/" + h.NS, "--", "nft"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	_ = nft("delete", "table", "inet", "sluicelab_fault")
	switch kind {
	case "restore":
		fmt.Fprintf(w, "%s restored\n", backend)
		return nil
	case "kill", "blackhole":
	default:
		return fmt.Errorf("fault %q: want kill, blackhole or restore", kind)
	}
	if err := nft("add", "table", "inet", "sluicelab_fault"); err != nil {
		return err
	}
	if err := nft("add", "chain", "inet", "sluicelab_fault", "in", "{ type filter hook input priority 0 ; }"); err != nil {
		return err
	}
	rules := [][]string{{"tcp", "dport", "{ 7, 80 }", "reject", "with", "tcp", "reset"}, {"udp", "dport", "53", "reject"}}
	if kind == "blackhole" {
		rules = [][]string{{"tcp", "dport", "{ 7, 80 }", "drop"}, {"udp", "dport", "53", "drop"}}
	}
	for _, r := range rules {
		if err := nft(append([]string{"add", "rule", "inet", "sluicelab_fault", "in"}, r...)...); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "%s: %s (undo with: sluice lab fault restore %s)\n", backend, map[string]string{
		"kill": "servers refuse connections", "blackhole": "packets to its servers are dropped"}[kind], backend)
	return nil
}
