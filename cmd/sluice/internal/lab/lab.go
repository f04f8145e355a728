// Package lab runs the throwaway lab of `sluice lab` and `sluice demo`:
// it builds the namespaces (cmd/sluice/netlab), runs sluice daemons in
// them, keeps the lab's state file, injects faults, and removes
// everything again.
package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
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

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

const Prefix = "sluicelab"

var Dir = "/run/sluice-lab"

func statePath() string { return filepath.Join(Dir, "lab.json") }

type Host struct {
	Name  string `json:"name"`
	NS    string `json:"netns"`
	Link  string `json:"link"`
	Addr  string `json:"addr"`
	Addr6 string `json:"addr6,omitempty"`
}

type State struct {
	ID        string `json:"id"`
	PinRoot   string `json:"pin_root"`
	Socket    string `json:"socket"`
	RunnerPID int    `json:"runner_pid"`
	DaemonPID int    `json:"daemon_pid,omitempty"`
	// With --pair: the second LB node, lb2, and its daemon.
	Pair       bool   `json:"pair,omitempty"`
	Socket2    string `json:"socket2,omitempty"`
	Daemon2PID int    `json:"daemon2_pid,omitempty"`
	// With --cluster N: nodes lb, lb2… on a three-member etcd cluster;
	// every node's socket and daemon, and the etcd members' processes.
	Cluster  int      `json:"cluster,omitempty"`
	Sockets  []string `json:"sockets,omitempty"`
	PIDs     []int    `json:"pids,omitempty"`
	EtcdPIDs []int    `json:"etcd_pids,omitempty"`
	// RouterPID is the cluster's router, BIRD, in the router namespace.
	RouterPID int `json:"router_pid,omitempty"`
	// Commands are each LB node's daemon command line, by host name,
	// for `lab fault start` after `lab fault kill`.
	Commands map[string]Command `json:"commands,omitempty"`
	Hosts    []Host             `json:"hosts"`
	VIPs     []string           `json:"vips"`
	Ready    bool               `json:"ready"`
}

func ReadState() (*State, error) {
	raw, err := os.ReadFile(statePath())
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", statePath(), err)
	}
	return &st, nil
}

func (s *State) write() error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return state.WriteFileAtomic(statePath(), raw, 0o600)
}

func (s *State) Host(name string) (Host, bool) {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// Alive reports whether process pid runs: it exists and is not a
// zombie (a killed daemon stays one until the runner reaps it).
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses: "pid (comm) S …".
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

var vips = []struct {
	vip   string
	args  []string
	check []string
}{
	{"10.77.1.100:80/tcp", []string{"--forward", "ipip"}, []string{"--check", "http", "--check-path", "/"}},
	{"10.77.1.100:7/tcp", []string{"--forward", "ipip"}, []string{"--check", "tcp"}},
	{"10.77.1.100:53/udp", []string{"--forward", "dsr"}, []string{"--check", "udp"}},
}

func HostNames(st *State) string {
	var names []string
	for _, h := range st.Hosts {
		names = append(names, h.Name)
	}
	return strings.Join(names, ", ")
}

// labUp starts the lab runner in the background and waits until it is ready.
func Up(ctx context.Context, w io.Writer, backends int, pair bool, cluster int) error {
	if st, err := ReadState(); err == nil {
		if Alive(st.RunnerPID) {
			return errors.New("a lab is already up (remove it with: sluice lab down)")
		}
		_ = cleanup(st)
	}
	_ = netlab.RemoveWithPrefix(Prefix + "-")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(Dir, 0o700); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(Dir, "runner.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "lab", "run", "--backends", fmt.Sprint(backends), fmt.Sprintf("--pair=%v", pair), "--cluster", fmt.Sprint(cluster))
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
	var runErr string
	for sc.Scan() {
		if msg, ok := strings.CutPrefix(sc.Text(), "ERROR "); ok {
			runErr = msg
		}
		if sc.Text() == "READY" {
			st, err := ReadState()
			if err != nil {
				return err
			}
			printReady(w, st, backends)
			_, err = io.WriteString(confirm, "OK\n")
			return err
		}
	}
	err = cmd.Wait()
	if runErr != "" {
		return fmt.Errorf("lab did not come up: %s", runErr)
	}
	raw, _ := os.ReadFile(filepath.Join(Dir, "runner.log"))
	return fmt.Errorf("lab did not come up: %v\n%s", err, raw)
}

// printReady tells what lab is up and how to use it.
func printReady(w io.Writer, st *State, backends int) {
	switch {
	case st.Cluster > 0:
		fmt.Fprintf(w, "lab %s is up: client behind a BIRD router doing ECMP over %d active sluice nodes (lb…lb%d), which announce the VIPs to it over BGP with BFD and share their state in a 3-member etcd cluster, %d backends\n\n", st.ID, st.Cluster, st.Cluster, backends)
	case st.Pair:
		fmt.Fprintf(w, "lab %s is up: client, lb and lb2 (an active/standby pair of sluice daemons), %d backends\n\n", st.ID, backends)
	default:
		fmt.Fprintf(w, "lab %s is up: client, lb (sluice daemon, XDP), %d backends\n\n", st.ID, backends)
	}
	fmt.Fprintf(w, "  sluice lab exec client -- curl -s http://10.77.1.100/\n")
	fmt.Fprintf(w, "  SLUICE_SOCKET=%s sluice status\n", st.Socket)
	fmt.Fprintf(w, "  sluice lab exec lb -- curl -s 127.0.0.1:9642/metrics\n")
	for _, h := range st.Hosts {
		if h.Name == "lb" {
			fmt.Fprintf(w, "  sluice lab exec lb -- sluice capture --iface %s --pin-root %s --vip 10.77.1.100:80/tcp -c 20 -w /tmp/lab.pcap    # the XDP frames, rx and tx\n", h.Link, st.PinRoot)
		}
	}
	fmt.Fprintf(w, "  sluice lab fault kill b1    # then: sluice lab fault restore b1\n")
	fmt.Fprintf(w, "  sluice lab model b1 --queue 8    # b1's model server reports 4× its load target; also --agent 50%%, --agent drain, --grpc not-serving\n")
	if st.Cluster > 0 {
		fmt.Fprintf(w, "  SLUICE_SOCKET=%s sluice cluster status    # other nodes: %s\n", st.Socket, strings.Join(st.Sockets[1:], ", "))
		fmt.Fprintf(w, "  SLUICE_SOCKET=%s sluice bgp status\n", st.Socket)
		fmt.Fprintf(w, "  sluice lab exec router -- ip route show 10.77.1.100    # one next hop per node\n")
		fmt.Fprintf(w, "  sluice lab fault kill lb2    # the router drops it within a second; then: sluice lab fault start lb2\n")
	}
	if st.Pair {
		fmt.Fprintf(w, "  SLUICE_SOCKET=%s sluice ha status    # lb2: SLUICE_SOCKET=%s\n", st.Socket, st.Socket2)
		fmt.Fprintf(w, "  sluice lab fault down lb    # lb2 takes over; then: sluice lab fault up lb\n")
	}
	fmt.Fprintf(w, "  sluice lab down\n")
}

// labRun builds the lab, runs the daemon in the LB namespace and holds
// everything until SIGTERM or SIGINT, then removes it all.
func Run(backends int, pair bool, cluster int) error {
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
	r, err := newRunner(ctx, backends, pair, cluster)
	if err != nil {
		return err
	}
	mctx, stop := context.WithCancel(ctx)
	r.stopModels = stop
	if err := r.startModels(mctx); err != nil {
		r.teardown()
		return err
	}
	// The daemons start here, not in the goroutine below, so that a
	// teardown never races a daemon still being started.
	if err := r.startDaemons(ctx); err != nil {
		r.teardown()
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- r.configure(ctx) }()
	select {
	case sig := <-sigs:
		r.teardown()
		return fmt.Errorf("interrupted by %v while starting", sig)
	case <-confirmed:
		r.teardown()
		return errors.New("sluice lab up went away while starting")
	case err := <-errc:
		if err != nil {
			r.teardown()
			return err
		}
	}
	r.st.Ready = true
	if err := r.st.write(); err != nil {
		r.teardown()
		return err
	}
	fmt.Println("READY")
	select {
	case sig := <-sigs:
		r.teardown()
		return fmt.Errorf("interrupted by %v while starting", sig)
	case ok := <-confirmed:
		if !ok {
			r.teardown()
			return errors.New("sluice lab up went away before reporting the lab")
		}
	}
	os.Stdout.Close()
	// The lab outlives `lab up` from here on, until `lab down`.
	<-sigs
	r.teardown()
	return nil
}

// runner is what `lab run` built and must remove: the lab, its state
// file and its daemons.
type runner struct {
	lab             *netlab.Lab
	st              *State
	pair            bool
	cluster         int
	lbs             []*netlab.Host
	daemon, daemon2 *Daemon
	nodes           []*Daemon // a cluster's daemons past lb's
	bird            *netlab.BIRD
	models          map[string]*netlab.ModelServer // by backend name
	stopModels      context.CancelFunc
}

// newRunner builds the lab's namespaces and writes its state file.
func newRunner(ctx context.Context, backends int, pair bool, cluster int) (*runner, error) {
	lab, err := netlab.NewLab(ctx, nil, netlab.LabOptions{Backends: backends, Prefix: Prefix, Pair: pair, Nodes: cluster, Router: cluster > 0})
	if err != nil {
		return nil, err
	}
	r := &runner{lab: lab, pair: pair, cluster: cluster, lbs: lab.Nodes,
		st: &State{ID: lab.ID(), PinRoot: lab.PinRoot(), Socket: filepath.Join(Dir, "sluice.sock"), RunnerPID: os.Getpid(), Pair: pair, Cluster: cluster}}
	hosts := append(append([]*netlab.Host{lab.Client}, r.lbs...), backendHosts(lab)...)
	if lab.Router != nil {
		hosts = append(hosts, lab.Router)
	}
	for _, h := range hosts {
		lh := Host{Name: h.Name, NS: h.NSName(), Link: h.Link, Addr: h.Addr.Addr().String()}
		if h.Addr6.IsValid() {
			lh.Addr6 = h.Addr6.Addr().String()
		}
		r.st.Hosts = append(r.st.Hosts, lh)
	}
	if err := r.st.write(); err != nil {
		r.teardown()
		return nil, err
	}
	return r, nil
}

// teardown removes everything the runner made.
func (r *runner) teardown() {
	if r.stopModels != nil {
		r.stopModels()
	}
	for _, m := range r.models {
		m.Stop()
	}
	r.stopRestarted()
	r.daemon.Stop()
	r.daemon2.Stop()
	for _, d := range r.nodes {
		d.Stop()
	}
	if r.bird != nil {
		r.bird.Stop()
	}
	for _, h := range r.lbs {
		_ = h.Do(func() error { return loader.DetachPinned(h.Link, r.lab.PinRoot()) })
	}
	_ = r.lab.Close()
	_ = netlab.RemoveWithPrefix(Prefix + "-" + r.lab.ID())
	os.RemoveAll(Dir)
}

// configure adds the lab's VIPs and backends once the daemons answer, and
// waits until every backend is up on every node.
func (r *runner) configure(ctx context.Context) error {
	cl := r.daemon.Client
	if err := r.daemon.Wait(ctx, 20*time.Second); err != nil {
		return err
	}
	clients := []*api.Client{cl}
	for _, d := range r.nodes {
		if err := d.Wait(ctx, 20*time.Second); err != nil {
			return err
		}
		clients = append(clients, d.Client) // every node checks: the cluster's verdict
	}
	if r.pair {
		if err := r.daemon2.Wait(ctx, 20*time.Second); err != nil {
			return err
		}
		// Changes go to the master (normally lb, which started first
		// and has the higher priority).
		m, err := waitMaster(ctx, 20*time.Second, r.daemon.Client, r.daemon2.Client)
		if err != nil {
			return err
		}
		cl = m
		clients = []*api.Client{cl, r.daemon2.Client} // the backup checks too: a warm standby
	}
	deadline := time.Now().Add(20 * time.Second)
	if err := r.addVIPs(ctx, cl); err != nil {
		return err
	}
	for _, c := range clients {
		if err := r.waitUp(ctx, c, deadline); err != nil {
			return err
		}
	}
	if r.cluster > 0 {
		return r.waitRoutes(ctx, 30*time.Second)
	}
	return nil
}

// startDaemons starts lb's daemon and, for a pair, lb2's once lb's answers.
func (r *runner) startDaemons(ctx context.Context) error {
	if r.cluster > 0 {
		return r.startCluster(ctx)
	}
	var ha1, ha2 []string
	lab := r.lab
	if r.pair {
		key := filepath.Join(Dir, "ha.key")
		if err := state.WriteFileAtomic(key, []byte(fmt.Sprintf("%x\n", randomKey())), 0o600); err != nil {
			return err
		}
		ha1 = []string{"--ha-peer", lab.LB2.Addr.Addr().String(), "--ha-priority", "200", "--ha-key-file", key}
		ha2 = []string{"--ha-peer", lab.LB.Addr.Addr().String(), "--ha-priority", "100", "--ha-key-file", key}
	}
	var err error
	if r.daemon, err = StartDaemon(lab, Dir, "127.0.0.1:9642", ha1...); err != nil {
		return err
	}
	r.st.Socket = r.daemon.Socket
	r.st.DaemonPID = r.daemon.cmd.Process.Pid
	r.record(lab.LB, r.daemon)
	if r.pair {
		// lb first: started together, either could become master first,
		// and without pre-emption the first stays master.
		if err := r.daemon.Wait(ctx, 20*time.Second); err != nil {
			return err
		}
		if r.daemon2, err = StartDaemonOn(lab, lab.LB2, filepath.Join(Dir, "lb2"), "127.0.0.1:9642", ha2...); err != nil {
			return err
		}
		r.st.Socket2 = r.daemon2.Socket
		r.st.Daemon2PID = r.daemon2.cmd.Process.Pid
		r.record(lab.LB2, r.daemon2)
	}
	return r.st.write()
}

// addVIPs adds the lab's VIPs with every backend through cl.
func (r *runner) addVIPs(ctx context.Context, cl *api.Client) error {
	for _, v := range vips {
		fwd := v.args[1]
		k, _ := state.ParseVIPKey(v.vip)
		if err := cl.Do(ctx, "POST", "/v1/vips", nil, api.VIPAddRequest{VIP: v.vip, Forward: fwd}, nil); err != nil {
			return err
		}
		r.st.VIPs = append(r.st.VIPs, v.vip)
		for _, b := range r.lab.Backends {
			be := labBackend(b.Addr.Addr().String(), state.Check{
				Type: v.check[1], Path: "/", Interval: state.Duration(200 * time.Millisecond),
				Timeout: state.Duration(200 * time.Millisecond), Rise: 2, Fall: 2})
			if k.Proto != state.TCP || v.check[1] != "http" {
				be.Check.Path = ""
			}
			if err := cl.Do(ctx, "POST", "/v1/backends", nil, api.BackendAddRequest{VIP: v.vip, Backend: be}, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitUp waits until the daemon behind c sees every backend of every VIP up.
func (r *runner) waitUp(ctx context.Context, c *api.Client, deadline time.Time) error {
	for {
		var s api.Status
		if err := c.Do(ctx, "GET", "/v1/status", nil, nil, &s); err != nil {
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
		if up == len(vips)*len(r.lab.Backends) {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("backends did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// randomKey is a fresh shared key for the lab pair.
func randomKey() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return b
}

// waitMaster waits until one of the pair's daemons is master and returns it.
func waitMaster(ctx context.Context, timeout time.Duration, cls ...*api.Client) (*api.Client, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, cl := range cls {
			var hs api.HAStatus
			if err := cl.Do(ctx, "GET", "/v1/ha/status", nil, nil, &hs); err == nil && hs.Role == "master" {
				return cl, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("neither of the lab's LB nodes became master")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func backendHosts(lab *netlab.Lab) []*netlab.Host {
	var out []*netlab.Host
	for _, b := range lab.Backends {
		out = append(out, b.Host)
	}
	return out
}

// cleanup removes whatever a lab left, whether or not its runner lives.
func cleanup(st *State) error {
	if st != nil {
		if Alive(st.RunnerPID) {
			syscall.Kill(st.RunnerPID, syscall.SIGTERM)
			for i := 0; i < 200 && Alive(st.RunnerPID); i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		for _, pid := range append(append([]int{st.DaemonPID, st.Daemon2PID, st.RouterPID}, st.PIDs...), st.EtcdPIDs...) {
			if Alive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
				for i := 0; i < 100 && Alive(pid); i++ {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}
		if st.PinRoot != "" {
			for _, h := range st.Hosts {
				if strings.HasPrefix(h.Name, "lb") {
					_ = netlab.InNamedNS(h.NS, func() error { return loader.DetachPinned(h.Link, st.PinRoot) })
				}
			}
		}
	}
	err := netlab.RemoveWithPrefix(Prefix + "-")
	os.RemoveAll(Dir)
	return err
}

func Down(w io.Writer) error {
	st, err := ReadState()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		st = nil
	}
	if err := cleanup(st); err != nil {
		return err
	}
	if left := netlab.LeftoversWithPrefix(Prefix + "-"); len(left) > 0 {
		return fmt.Errorf("could not remove: %v", left)
	}
	fmt.Fprintln(w, "lab removed: no namespace, link, pinned object or process left")
	return nil
}

func Status(ctx context.Context, w io.Writer) error {
	st, err := ReadState()
	if err != nil {
		fmt.Fprintln(w, "no lab is up (start one with: sluice lab up)")
		return nil
	}
	fmt.Fprintf(w, "lab %s: runner pid %d (alive %v), daemon pid %d (alive %v), socket %s\n",
		st.ID, st.RunnerPID, Alive(st.RunnerPID), st.DaemonPID, Alive(st.DaemonPID), st.Socket)
	for i, sock := range st.Sockets {
		var cs api.ClusterStatus
		if err := api.NewClient(sock).Do(ctx, "GET", "/v1/cluster", nil, nil, &cs); err == nil {
			fmt.Fprintf(w, "node n%d: daemon pid %d (alive %v), socket %s, cluster revision %d, coordinator %s, store up %v\n",
				i+1, st.PIDs[i], Alive(st.PIDs[i]), sock, cs.Revision, cs.Coordinator, cs.StoreUp)
		}
	}
	if st.Pair {
		fmt.Fprintf(w, "lb2: daemon pid %d (alive %v), socket %s\n", st.Daemon2PID, Alive(st.Daemon2PID), st.Socket2)
		for _, n := range []struct{ name, sock string }{{"lb", st.Socket}, {"lb2", st.Socket2}} {
			var hs api.HAStatus
			if err := api.NewClient(n.sock).Do(ctx, "GET", "/v1/ha/status", nil, nil, &hs); err == nil {
				fmt.Fprintf(w, "%s: %s, revision %d\n", n.name, hs.Role, hs.Revision)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tADDRESS\tIPV6\tNETNS")
	for _, h := range st.Hosts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Name, h.Addr, h.Addr6, h.NS)
	}
	tw.Flush()
	var s api.Status
	if err := api.NewClient(st.Socket).Do(ctx, "GET", "/v1/status", nil, nil, &s); err != nil {
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

func Fault(ctx context.Context, w io.Writer, kind, backend string) error {
	st, err := ReadState()
	if err != nil {
		return errors.New("no lab is up (start one with: sluice lab up)")
	}
	switch kind {
	case "down", "up":
		return linkFault(ctx, w, st, kind, backend)
	case "kill", "start":
		if strings.HasPrefix(backend, "lb") {
			return nodeFault(ctx, w, st, kind, backend)
		}
	}
	h, ok := st.Host(backend)
	if !ok || !strings.HasPrefix(backend, "b") {
		return fmt.Errorf("backend %q: the lab's backends are %s", backend, backendNames(st))
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
		return fmt.Errorf("fault %q: want kill, blackhole or restore (a backend), or down, up, kill or start (an LB node)", kind)
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

// backendNames lists the lab's backends.
func backendNames(st *State) string {
	var out []string
	for _, h := range st.Hosts {
		if strings.HasPrefix(h.Name, "b") {
			out = append(out, h.Name)
		}
	}
	return strings.Join(out, ", ")
}

// linkFault takes an LB node's link down or up: in a pair, the other
// node takes over (or the node returns, as backup); in a cluster, the
// router drops the node from its ECMP set when BFD times out.
func linkFault(ctx context.Context, w io.Writer, st *State, kind, node string) error {
	h, ok := st.Host(node)
	if _, isNode := st.Commands[node]; !ok || !isNode {
		return fmt.Errorf("node %q: the lab's LB nodes are %s", node, strings.Join(st.nodeNames(), ", "))
	}
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/var/run/netns/"+h.NS, "--", "ip", "link", "set", h.Link, kind).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip link set %s %s: %v: %s", h.Link, kind, err, out)
	}
	fmt.Fprintf(w, "%s: link %s\n", node, kind)
	return nil
}
