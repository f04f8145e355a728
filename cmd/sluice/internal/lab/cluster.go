package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/state"
)

// Command is how an LB node's daemon was started: what `lab fault
// start` runs again.
type Command struct {
	NS   string   `json:"netns"`
	Args []string `json:"args"`
	Log  string   `json:"log"`
}

// record notes how d was started on h.
func (r *runner) record(h *netlab.Host, d *Daemon) {
	if r.st.Commands == nil {
		r.st.Commands = map[string]Command{}
	}
	r.st.Commands[h.Name] = Command{NS: h.NSName(), Args: d.Args, Log: d.logPath}
}

// startCluster starts a three-member etcd cluster, BIRD on the router,
// and one daemon per LB node on etcd, announcing the VIPs to the router
// over BGP with BFD and syncing flows; lb's socket is where a lone
// daemon's would be.
func (r *runner) startCluster(ctx context.Context) error {
	etcd, err := r.lab.StartEtcd(ctx, 3, netip.MustParseAddr("10.77.0.31"), 24)
	if err != nil {
		return err
	}
	for _, m := range etcd.Members {
		r.st.EtcdPIDs = append(r.st.EtcdPIDs, m.PID())
		r.st.Hosts = append(r.st.Hosts, Host{Name: m.Name, NS: m.NSName(), Link: m.Link, Addr: m.Addr.Addr().String()})
	}
	if r.bird, err = netlab.StartBIRD(ctx, Dir, r.lab.Router, netlab.LabBIRDConfig(r.lab, true)); err != nil {
		return err
	}
	r.st.RouterPID = r.bird.PID()
	key := filepath.Join(Dir, "flow-sync.key")
	if err := state.WriteFileAtomic(key, []byte(fmt.Sprintf("%x\n", randomKey())), 0o600); err != nil {
		return err
	}
	for i, h := range r.lab.Nodes {
		dir := Dir
		if i > 0 {
			dir = filepath.Join(Dir, h.Name)
		}
		d, err := StartDaemonOn(r.lab, h, dir, "127.0.0.1:9642", "--store", "etcd", "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","),
			"--cluster", "lab", "--node-name", fmt.Sprintf("n%d", i+1), "--flow-sync-key", key,
			"--bgp-asn", "65001", "--bgp-peer", netlab.LabRouter4.Addr().String()+"@65000", "--bgp-bfd")
		if err != nil {
			return err
		}
		if i == 0 {
			r.daemon = d
		} else {
			r.nodes = append(r.nodes, d)
		}
		r.record(h, d)
		r.st.Sockets = append(r.st.Sockets, d.Socket)
		r.st.PIDs = append(r.st.PIDs, d.cmd.Process.Pid)
	}
	r.st.Socket, r.st.DaemonPID = r.daemon.Socket, r.daemon.cmd.Process.Pid
	return r.st.write()
}

// waitRoutes waits until the router's route to the lab's VIP has a next
// hop per LB node: every node announces it.
func (r *runner) waitRoutes(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		hops, out, err := nextHops(ctx, r.lab.Router)
		if err != nil {
			return err
		}
		if hops == len(r.lab.Nodes) {
			return nil
		}
		if time.Now().After(deadline) {
			bgp, _ := r.bird.Show(ctx, "protocols")
			return fmt.Errorf("the router's route to %s has %d next hops after %v, want %d: %s\n%s", netlab.LabVIP4, hops, timeout, len(r.lab.Nodes), out, bgp)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// nextHops counts the router's next hops to the lab's VIP.
func nextHops(ctx context.Context, router *netlab.Host) (int, string, error) {
	out, err := router.Command(ctx, "ip", "-4", "route", "show", netlab.LabVIP4.String()).CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("ip route on the router: %v: %s", err, out)
	}
	n := 0
	for _, f := range strings.Fields(string(out)) {
		if a, err := netip.ParseAddr(f); err == nil && netlab.LabRouter4.Contains(a) {
			n++
		}
	}
	return n, strings.TrimSpace(string(out)), nil
}

// pid is the daemon process of LB node name as the state file has it.
func (s *State) pid(name string) int {
	switch {
	case s.Cluster > 0:
		if i := s.nodeIndex(name); i >= 0 && i < len(s.PIDs) {
			return s.PIDs[i]
		}
	case name == "lb":
		return s.DaemonPID
	case name == "lb2":
		return s.Daemon2PID
	}
	return 0
}

func (s *State) setPID(name string, pid int) {
	switch {
	case s.Cluster > 0:
		if i := s.nodeIndex(name); i >= 0 && i < len(s.PIDs) {
			s.PIDs[i] = pid
		}
		if name == "lb" {
			s.DaemonPID = pid
		}
	case name == "lb":
		s.DaemonPID = pid
	case name == "lb2":
		s.Daemon2PID = pid
	}
}

// nodeIndex is lbN's place among a cluster's nodes: lb is 0, lb2 is 1…
func (s *State) nodeIndex(name string) int {
	if name == "lb" {
		return 0
	}
	var n int
	if _, err := fmt.Sscanf(name, "lb%d", &n); err != nil || n < 2 || n > s.Cluster {
		return -1
	}
	return n - 1
}

// nodeNames lists the lab's LB nodes.
func (s *State) nodeNames() []string {
	var out []string
	for name := range s.Commands {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// nodeFault kills an LB node's daemon (kill -9: it stops announcing and
// answering BFD, its XDP program stays attached) or starts it again.
func nodeFault(ctx context.Context, w io.Writer, st *State, kind, node string) error {
	c, ok := st.Commands[node]
	if !ok {
		return fmt.Errorf("node %q: the lab's LB nodes are %s", node, strings.Join(st.nodeNames(), ", "))
	}
	pid := st.pid(node)
	switch kind {
	case "kill":
		if !Alive(pid) {
			return fmt.Errorf("%s: its daemon is not running (start it with: sluice lab fault start %s)", node, node)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill %s's daemon (pid %d): %w", node, pid, err)
		}
		fmt.Fprintf(w, "%s: daemon killed (pid %d); start it again with: sluice lab fault start %s\n", node, pid, node)
		return nil
	}
	if Alive(pid) {
		return fmt.Errorf("%s: its daemon runs already (pid %d)", node, pid)
	}
	started, err := startCommand(ctx, c)
	if err != nil {
		return fmt.Errorf("start %s's daemon: %w", node, err)
	}
	st.setPID(node, started)
	if err := st.write(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: daemon started (pid %d, log %s)\n", node, started, c.Log)
	return nil
}

// startCommand starts a daemon as c says, in a session of its own so
// that it outlives this command; `lab down` stops it.
func startCommand(ctx context.Context, c Command) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(c.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + c.NS, "--", self}, c.Args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	// nsenter execs the daemon: the process is the daemon's.
	pid := cmd.Process.Pid
	if err := cmd.Process.Release(); err != nil {
		return 0, err
	}
	return pid, nil
}

// stopRestarted stops daemons that `lab fault start` started: they are
// not the runner's children.
func (r *runner) stopRestarted() {
	st, err := ReadState()
	if err != nil {
		return
	}
	own := map[int]bool{}
	for _, d := range append([]*Daemon{r.daemon, r.daemon2}, r.nodes...) {
		if d != nil && d.cmd.Process != nil {
			own[d.cmd.Process.Pid] = true
		}
	}
	for name := range st.Commands {
		if pid := st.pid(name); !own[pid] && Alive(pid) {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 250 && Alive(pid); i++ {
				time.Sleep(20 * time.Millisecond)
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
