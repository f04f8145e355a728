package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/internal/lab"
	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv/testutil"
)

var sluiceBin string

func TestMain(m *testing.M) { testutil.RunWithSluice(m, &sluiceBin) }

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sluiceBin, args...).CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, args...)
	if err != nil {
		t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// assertGone checks that nothing of the lab is left: namespaces, pins,
// the lab directory, and the given processes.
func assertGone(t *testing.T, pids ...int) {
	t.Helper()
	if left := netlab.LeftoversWithPrefix(lab.Prefix + "-"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
	if _, err := os.Stat(lab.Dir); err == nil {
		t.Fatalf("%s left behind", lab.Dir)
	}
	for _, pid := range pids {
		deadline := time.Now().Add(10 * time.Second)
		for lab.Alive(pid) {
			// A zombie child of ours counts as gone once reaped elsewhere;
			// these processes are not our children.
			if time.Now().After(deadline) {
				t.Fatalf("process %d still runs", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// startLab runs `lab up` with args (and `lab down` when the test ends) and
// returns the lab's state and what `lab up` printed.
func startLab(t *testing.T, args ...string) (*lab.State, string) {
	t.Helper()
	testutil.Require(t)
	t.Cleanup(func() { run(t, "lab", "down") })
	out := mustRun(t, append([]string{"lab", "up"}, args...)...)
	st, err := lab.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	return st, out
}

func TestLab(t *testing.T) {
	st, _ := startLab(t)
	seen := map[string]bool{}
	for range 20 {
		name := strings.TrimSpace(mustRun(t, "lab", "exec", "client", "--", "curl", "-s", "--max-time", "5", "http://10.77.1.100/"))
		if name != "b1" && name != "b2" && name != "b3" {
			t.Fatalf("curl through the VIP answered %q, want a backend's name", name)
		}
		seen[name] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 requests all reached %v", seen)
	}
	out := mustRun(t, "lab", "status")
	if !strings.Contains(out, "vip 10.77.1.100:80/tcp (ipip): 10.77.0.11=up") {
		t.Fatalf("lab status:\n%s", out)
	}
	mustRun(t, "lab", "fault", "kill", "b2")
	if out, err := run(t, "lab", "exec", "client", "--", "curl", "-s", "--max-time", "2", "http://10.77.0.12/"); err == nil {
		t.Fatalf("b2 still answers after fault kill: %q", out)
	}
	mustRun(t, "lab", "fault", "restore", "b2")
	if !strings.Contains(mustRun(t, "lab", "down"), "lab removed") {
		t.Fatal("lab down did not confirm")
	}
	assertGone(t, st.RunnerPID, st.DaemonPID)
}

// TestLabPair: `lab up --pair` runs lb and lb2 as an LB pair; the VIP
// answers through lb, keeps answering after lb's link goes down (lb2 takes
// over), and `lab down` removes both.
func TestLabPair(t *testing.T) {
	st, out := startLab(t, "--pair", "--backends", "2")
	if !strings.Contains(out, "active/standby pair") || !strings.Contains(out, "sluice lab fault down lb") {
		t.Fatalf("lab up --pair:\n%s", out)
	}
	curl := func() string {
		t.Helper()
		name := strings.TrimSpace(mustRun(t, "lab", "exec", "client", "--", "curl", "-s", "--max-time", "5", "http://10.77.1.100/"))
		if name != "b1" && name != "b2" {
			t.Fatalf("curl through the VIP answered %q", name)
		}
		return name
	}
	curl()
	status := mustRun(t, "lab", "status")
	if !strings.Contains(status, "lb: master") || !strings.Contains(status, "lb2: backup") {
		t.Fatalf("lab status:\n%s", status)
	}
	mustRun(t, "lab", "fault", "down", "lb")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(mustRun(t, "lab", "status"), "lb2: master") {
		if time.Now().After(deadline) {
			t.Fatal("lb2 did not take over")
		}
		time.Sleep(50 * time.Millisecond)
	}
	curl()
	mustRun(t, "lab", "fault", "up", "lb")
	if _, err := run(t, "lab", "fault", "down", "b1"); err == nil {
		t.Fatal("fault down accepted a backend")
	}
	if !strings.Contains(mustRun(t, "lab", "down"), "lab removed") {
		t.Fatal("lab down did not confirm")
	}
	assertGone(t, st.RunnerPID, st.DaemonPID, st.Daemon2PID)
}

// TestLabUpKilledMidway: when `lab up` dies while the lab is being built,
// the lab removes itself, and `lab down` leaves nothing either.
func TestLabUpKilledMidway(t *testing.T) {
	testutil.Require(t)
	t.Cleanup(func() { run(t, "lab", "down") })
	cmd := exec.Command(sluiceBin, "lab", "up")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill it as soon as the runner has recorded the lab (namespaces exist).
	var st *lab.State
	deadline := time.Now().Add(20 * time.Second)
	for st == nil {
		if s, err := lab.ReadState(); err == nil && s.DaemonPID != 0 {
			st = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lab up never recorded its lab")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// The runner notices and tears everything down by itself.
	deadline = time.Now().Add(20 * time.Second)
	for lab.Alive(st.RunnerPID) {
		if time.Now().After(deadline) {
			t.Fatal("the runner outlived a killed lab up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	assertGone(t, st.DaemonPID)
	mustRun(t, "lab", "down")
	assertGone(t)
}

// TestLabRunnerKilled: the process holding the lab is killed outright;
// `lab down` still removes everything it had made.
func TestLabRunnerKilled(t *testing.T) {
	st, _ := startLab(t)
	syscall.Kill(st.RunnerPID, syscall.SIGKILL)
	for lab.Alive(st.RunnerPID) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(netlab.LeftoversWithPrefix(lab.Prefix+"-")) == 0 {
		t.Fatal("expected the killed runner to leave namespaces behind for down to remove")
	}
	mustRun(t, "lab", "down")
	assertGone(t, st.DaemonPID)
}

// TestDemo runs the guided tour end to end: it must pass, print its
// summary, and leave nothing behind.
func TestDemo(t *testing.T) {
	testutil.Require(t)
	out := mustRun(t, "demo")
	for _, want := range []string{"summary", "failure detected", "healthy flows that survived", "slow start: b2", "at 4× its load target", "lab removed"} {
		if !strings.Contains(out, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAIL") {
		t.Fatalf("a demo check failed:\n%s", out)
	}
}

// TestLabCluster: `lab up --cluster 3` runs three active nodes on a real
// three-member etcd cluster behind a BIRD router; the router's route to
// the VIP has a next hop per node, the VIP answers the client behind the
// router, `cluster status` on any node lists the three at one revision
// with equal ring digests, a change made on lb3 reaches lb, `lab fault
// kill|start|down|up lbN` take a node out of the router's route and back,
// and `lab down` removes everything, etcd and BIRD too.
func TestLabCluster(t *testing.T) {
	st, out := startLab(t, "--cluster", "3", "--backends", "2")
	if !strings.Contains(out, "3 active sluice nodes") || !strings.Contains(out, "sluice cluster status") {
		t.Fatalf("lab up --cluster 3:\n%s", out)
	}
	if name := strings.TrimSpace(mustRun(t, "lab", "exec", "client", "--", "curl", "-s", "--max-time", "5", "http://10.77.1.100/")); name != "b1" && name != "b2" {
		t.Fatalf("curl through the VIP answered %q", name)
	}
	var cs api.ClusterStatus
	if err := json.Unmarshal([]byte(mustRun(t, "cluster", "status", "-o", "json", "--socket", st.Sockets[2])), &cs); err != nil {
		t.Fatal(err)
	}
	if len(cs.Nodes) != 3 || cs.Coordinator == "" || !cs.StoreUp {
		t.Fatalf("cluster status on lb3: %+v", cs)
	}
	for _, n := range cs.Nodes {
		if n.AppliedRevision != cs.Revision || fmt.Sprint(n.RingSHA256) != fmt.Sprint(cs.Nodes[0].RingSHA256) {
			t.Fatalf("cluster status on lb3: nodes differ: %+v", cs.Nodes)
		}
	}
	labNodeFaults(t, st)
	mustRun(t, "vip", "add", "10.77.1.100:8080/tcp", "--forward", "ipip", "--socket", st.Sockets[2])
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(mustRun(t, "status", "--socket", st.Sockets[0]), "10.77.1.100:8080/tcp") {
		if time.Now().After(deadline) {
			t.Fatal("a VIP added on lb3 did not reach lb in 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(mustRun(t, "lab", "down"), "lab removed") {
		t.Fatal("lab down did not confirm")
	}
	st2, _ := lab.ReadState()
	if st2 == nil {
		st2 = st
	}
	assertGone(t, append(append([]int{st.RunnerPID, st.RouterPID}, st2.PIDs...), st.EtcdPIDs...)...)
}

// labNodeFaults drives `lab fault` on the cluster's nodes and watches the
// router's route: kill lb2 and down lb3 each leave two next hops, start
// lb2 and up lb3 bring back three; bad names are refused by name.
func labNodeFaults(t *testing.T, st *lab.State) {
	t.Helper()
	waitRouterHops(t, 3)
	if out, err := run(t, "lab", "fault", "kill", "lb9"); err == nil || !strings.Contains(out, "lb, lb2, lb3") {
		t.Fatalf("lab fault kill lb9: %v: %s", err, out)
	}
	for _, f := range []struct{ out, in, node string }{{"kill", "start", "lb2"}, {"down", "up", "lb3"}} {
		mustRun(t, "lab", "fault", f.out, f.node)
		waitRouterHops(t, 2)
		if name := strings.TrimSpace(mustRun(t, "lab", "exec", "client", "--", "curl", "-s", "--max-time", "5", "http://10.77.1.100/")); name != "b1" && name != "b2" {
			t.Fatalf("curl through the VIP with %s %s answered %q", f.node, f.out, name)
		}
		if f.out == "kill" {
			if out, err := run(t, "lab", "fault", "kill", f.node); err == nil || !strings.Contains(out, "not running") {
				t.Fatalf("lab fault kill %s twice: %v: %s", f.node, err, out)
			}
		}
		mustRun(t, "lab", "fault", f.in, f.node)
		waitRouterHops(t, 3)
	}
}

// waitRouterHops waits until the lab router's route to the VIP has n
// next hops.
func waitRouterHops(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := mustRun(t, "lab", "exec", "router", "--", "ip", "-4", "route", "show", "10.77.1.100")
		if got := strings.Count(out, "nexthop via"); got == n || (n == 1 && strings.Contains(out, " via ")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router's route to the VIP is %q after 20 s, want %d next hops", out, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLabModel: the lab's backends run model servers that the daemon's
// agent checks and load metrics read; `lab model` changes what they
// report, and the daemon follows: b1 at 4× its load target loses weight,
// b2's agent answering drain drains it, and both come back.
func TestLabModel(t *testing.T) {
	st, out := startLab(t)
	if !strings.Contains(out, "sluice lab model b1 --queue 8") {
		t.Fatalf("lab up does not mention lab model:\n%s", out)
	}
	cl := api.NewClient(st.Socket)
	wait := func(what string, ok func(b1, b2 api.BackendStatus) bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			var s api.Status
			if err := cl.Do(context.Background(), "GET", "/v1/status", nil, nil, &s); err != nil {
				t.Fatal(err)
			}
			for _, v := range s.VIPs {
				if v.VIP == "10.77.1.100:80/tcp" && ok(v.Backends[0], v.Backends[1]) {
					t.Logf("%s: b1 %s weight %g (%s), b2 %s (%s)", what, v.Backends[0].State, v.Backends[0].EffectiveWeight,
						v.Backends[0].WeightReason, v.Backends[1].State, v.Backends[1].Reason)
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if out := mustRun(t, "lab", "model", "b1", "--queue", "8"); !strings.Contains(out, "queue 8 (target 2)") {
		t.Fatalf("lab model: %s", out)
	}
	wait("b1 over its load target", func(b1, _ api.BackendStatus) bool { return b1.State == "up" && b1.EffectiveWeight < 0.5 })
	mustRun(t, "lab", "model", "b2", "--agent", "drain")
	wait("b2's agent drains it", func(_, b2 api.BackendStatus) bool { return b2.State == "draining" && b2.Reason == "agent: drain" })
	mustRun(t, "lab", "model", "b1", "--queue", "0")
	mustRun(t, "lab", "model", "b2", "--agent", "ready")
	wait("both back", func(b1, b2 api.BackendStatus) bool { return b1.EffectiveWeight == 1 && b2.State == "up" })
	if _, err := run(t, "lab", "model", "b9", "--queue", "1"); err == nil {
		t.Fatal("lab model accepted a backend the lab lacks")
	}
	if _, err := run(t, "lab", "model", "b1", "--grpc", "maybe"); err == nil {
		t.Fatal("lab model accepted --grpc maybe")
	}
}
