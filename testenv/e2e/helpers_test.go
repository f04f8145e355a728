package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

var sluiceBin string

func TestMain(m *testing.M) { testutil.RunWithSluice(m, &sluiceBin) }

type daemonProc struct {
	cmd      *exec.Cmd
	socket   string
	stateDir string
	log      *strings.Builder
	mu       *sync.Mutex
	done     chan error
}

// newLab makes a lab that lasts as long as the test (closed after the
// daemons the test starts have stopped).
func newLab(t testing.TB, opts netlab.LabOptions) *netlab.Lab {
	t.Helper()
	testutil.Require(t)
	lab, err := netlab.NewLab(context.Background(), nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	return lab
}

// labWithDaemon is newLab with the given number of backends and a daemon
// on its LB node.
func labWithDaemon(t testing.TB, backends int) (*netlab.Lab, *daemonProc) {
	t.Helper()
	lab := newLab(t, netlab.LabOptions{Backends: backends})
	return lab, startDaemon(t, lab, "")
}

// startDaemon runs `sluice daemon` inside the lab's LB namespace and waits
// until its API answers.
func startDaemon(t testing.TB, lab *netlab.Lab, stateDir string, extra ...string) *daemonProc {
	t.Helper()
	return startDaemonOn(t, lab, lab.LB, stateDir, extra...)
}

// startDaemonOn runs `sluice daemon` on one of the lab's LB hosts.
func startDaemonOn(t testing.TB, lab *netlab.Lab, host *netlab.Host, stateDir string, extra ...string) *daemonProc {
	t.Helper()
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	return startDaemonCmd(t, host.Command(context.Background(), sluiceBin, daemonArgs(lab, host, stateDir, extra...)...), stateDir)
}

// startDaemonCmd starts a `sluice daemon` command whose socket is in
// stateDir and waits until its API answers.
func startDaemonCmd(t testing.TB, cmd *exec.Cmd, stateDir string) *daemonProc {
	t.Helper()
	sock := filepath.Join(stateDir, "sluice.sock")
	p := &daemonProc{cmd: cmd, socket: sock, stateDir: stateDir, log: &strings.Builder{}, mu: &sync.Mutex{}, done: make(chan error, 1)}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", p.logText())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return p
		}
		select {
		case err := <-p.done:
			t.Fatalf("daemon exited: %v\n%s", err, p.logText())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start\n%s", p.logText())
		}
	}
}

// daemonArgs are the arguments of `sluice daemon` on host with stateDir
// (its socket in there).
func daemonArgs(lab *netlab.Lab, host *netlab.Host, stateDir string, extra ...string) []string {
	return append([]string{"daemon", "--iface", host.Link, "--xdp-mode", "native", "--state-dir", stateDir,
		"--socket", filepath.Join(stateDir, "sluice.sock"), "--metrics-addr", "127.0.0.1:9642", "--pin-root", lab.PinRoot(),
		"--flow-table-size", "65536"}, extra...)
}

func (p *daemonProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func (p *daemonProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// kill9 kills the daemon without letting it clean up.
func (p *daemonProc) kill9(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// cli runs the sluice CLI against the daemon.
func (p *daemonProc) cli(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(sluiceBin, args...)
	cmd.Env = append(os.Environ(), "SLUICE_SOCKET="+p.socket)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *daemonProc) mustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.cli(t, args...)
	if err != nil {
		t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (p *daemonProc) status(t testing.TB) api.Status {
	t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(p.mustCLI(t, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStatus polls status until ok, or fails after the deadline.
func (p *daemonProc) waitStatus(t testing.TB, what string, ok func(api.Status) bool) api.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := p.status(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func backendState(st api.Status, vip, addr string) api.BackendStatus {
	for _, v := range st.VIPs {
		for _, b := range v.Backends {
			if v.VIP == vip && b.Addr == addr {
				return b
			}
		}
	}
	return api.BackendStatus{}
}

func allUp(n int) func(api.Status) bool {
	return func(st api.Status) bool {
		up := 0
		for _, v := range st.VIPs {
			for _, b := range v.Backends {
				if b.State == "up" && b.Usable {
					up++
				}
			}
		}
		return up == n
	}
}

// eventWatcher follows `sluice events -o json --follow`.
type eventWatcher struct {
	ch   chan api.Event
	stop func()
}

func (p *daemonProc) follow(t testing.TB) *eventWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, sluiceBin, "events", "-o", "json", "--follow")
	cmd.Env = append(os.Environ(), "SLUICE_SOCKET="+p.socket)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &eventWatcher{ch: make(chan api.Event, 1024), stop: func() { cancel(); cmd.Wait() }}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e api.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				w.ch <- e
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// next waits for the next health event of backend addr to state to.
func (w *eventWatcher) next(t testing.TB, addr, to string, since time.Time) api.Event {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case e := <-w.ch:
			if e.Kind == "health" && e.Backend == addr && e.To == to && !e.Time.Before(since) {
				return e
			}
		case <-timeout:
			t.Fatalf("no event %s -> %s", addr, to)
		}
	}
}

// conn is a long-lived connection through the VIP and the backend that took it.
type conn struct {
	c       net.Conn
	backend string
}

func dialVIP(t testing.TB, lab *netlab.Lab, vip netip.AddrPort) (conn, error) {
	return dialVIPWithin(t, lab, vip, 3*time.Second)
}

// dialVIPWithin bounds the connect: probing clients retry a SYN that got no
// answer at once instead of waiting out TCP's one-second retransmission.
func dialVIPWithin(t testing.TB, lab *netlab.Lab, vip netip.AddrPort, within time.Duration) (conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	c, err := lab.Client.Dial(ctx, "tcp4", "", vip.String())
	if err != nil {
		return conn{}, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return conn{}, err
	}
	c.SetDeadline(time.Time{})
	return conn{c: c, backend: strings.TrimSpace(name)}, nil
}

// alive checks a long-lived connection still echoes through its backend.
func (c conn) alive() bool { return c.echo() == nil }

// echo sends a line on a long-lived connection and says why it did not
// come back (a reset, a timeout, other bytes).
func (c conn) echo() error { return c.echoWithin(2 * time.Second) }

// echoWithin is echo with a deadline of d.
func (c conn) echoWithin(d time.Duration) error {
	c.c.SetDeadline(time.Now().Add(d))
	defer c.c.SetDeadline(time.Time{})
	if _, err := c.c.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c.c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

func backendByName(lab *netlab.Lab, name string) *netlab.Backend {
	for _, b := range lab.Backends {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// metricSeries returns, from a Prometheus text exposition, the value of
// every sample of metric name that carries all the given labels (written
// `k="v"`). A histogram's name_count and name_sum are series too.
func metricSeries(body, name string, labels ...string) []float64 {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil
	}
	value := func(m *dto.Metric) float64 {
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
		return m.Untyped.GetValue()
	}
	fam := fams[name]
	if fam == nil {
		for suffix, get := range map[string]func(*dto.Metric) float64{
			"_count": func(m *dto.Metric) float64 { return float64(m.Histogram.GetSampleCount()) },
			"_sum":   func(m *dto.Metric) float64 { return m.Histogram.GetSampleSum() },
		} {
			if base, ok := strings.CutSuffix(name, suffix); ok && fams[base] != nil && fams[base].GetType() == dto.MetricType_HISTOGRAM {
				fam, value = fams[base], get
			}
		}
	}
	if fam == nil {
		return nil
	}
	var out []float64
	for _, m := range fam.Metric {
		have := map[string]bool{}
		for _, lp := range m.Label {
			have[fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue())] = true
		}
		ok := true
		for _, l := range labels {
			ok = ok && have[l]
		}
		if ok {
			out = append(out, value(m))
		}
	}
	return out
}
