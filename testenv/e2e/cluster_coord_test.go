package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// vipFail is the cluster tests' failover VIP (checks on the echo port).
const vipFail = "10.77.1.101:7/tcp"

// clusterHook writes a promotion hook that appends "EPOCH NEW NODE UNIXNS".
func clusterHook(t testing.TB) (script, log string) {
	dir := t.TempDir()
	log, script = filepath.Join(dir, "hook.log"), filepath.Join(dir, "hook.sh")
	body := "#!/bin/sh\necho \"$SLUICE_EPOCH $SLUICE_NEW_PRIMARY $SLUICE_NODE $(date +%s%N)\" >> " + log + "\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, log
}

// hookRuns parses the hook log: one "epoch primary node unixns" per run.
func hookRuns(t testing.TB, log string) [][4]string {
	var out [][4]string
	for _, l := range hookCalls(t, log) {
		if f := strings.Fields(l); len(f) == 4 {
			out = append(out, [4]string{f[0], f[1], f[2], f[3]})
		}
	}
	return out
}

// failState is the failover VIP's primary and epoch in d's state ("" and
// 0 while d does not answer).
func failState(d *daemonProc) (string, uint64) {
	var s state.State
	if err := api.NewClient(d.socket).Do(context.Background(), "GET", "/v1/state", nil, nil, &s); err != nil {
		return "", 0
	}
	for _, v := range s.VIPs {
		if v.VIP == vipFail {
			return v.Primary, v.Epoch
		}
	}
	return "", 0
}

// coordinatorIndex is the index of the node cluster status names.
func (lc *labCluster) coordinatorIndex(t testing.TB, from int) int {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		name := clusterStatus(t, lc.nodes[from]).Coordinator
		if i, err := strconv.Atoi(strings.TrimPrefix(name, "n")); err == nil && i >= 1 && i <= len(lc.nodes) {
			return i - 1
		}
		if time.Now().After(deadline) {
			t.Fatal("no coordinator elected in 15 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterCoordinator: 20 times, the failover VIP's primary fails and
// the coordinator is killed with -9 at once. Another node is elected and
// promotes: the hook runs exactly once per epoch, epochs strictly
// increase, and no sample of the nodes ever shows two primaries at one
// revision. Then the coordinator is cut from etcd (nftables) while the
// primary fails: it runs no hook after its lease ends; another node does.
func TestClusterCoordinator(t *testing.T) {
	lc := newLabCluster(t, 3, 3, "--cluster-ttl", "1")
	script, log := clusterHook(t)
	a := lc.nodes[0]
	a.mustCLI(t, "vip", "add", vipFail, "--forward", "ipip", "--policy", "failover", "--promote-cmd", script)
	for i, b := range lc.lab.Backends {
		a.mustCLI(t, append([]string{"backend", "add", vipFail, b.Addr.Addr().String(), "--priority", fmt.Sprint(30 - 10*i)}, fastCheck...)...)
	}
	waitPrimary := func(not string) (string, uint64) {
		deadline := time.Now().Add(20 * time.Second)
		for {
			for _, n := range lc.nodes {
				if p, e := failState(n); p != "" && p != not {
					return p, e
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no primary other than %q in 20 s; hooks: %v", not, hookRuns(t, log))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitPrimary("")
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	var dual []string
	go func() { defer sampler.Done(); dual = lc.samplePrimaries(stop) }()

	var promotions int
	for run := range 20 {
		c := lc.coordinatorIndex(t, (run+1)%3)
		old, _ := waitPrimary("")
		victim := lc.lab.Backends[backendIndex(lc, old)]
		victim.StopServers(true)
		lc.nodes[c].kill9(t)
		waitPrimary(old)
		promotions++
		lc.restart(t, c)
		if err := victim.StartServers(); err != nil {
			t.Fatal(err)
		}
		lc.waitClusterStatus(t, "the cluster whole again")
	}

	// Cut the coordinator from etcd while the primary fails.
	c := lc.coordinatorIndex(t, 0)
	host := lc.lab.Nodes[c]
	nft(t, host, "add", "table", "inet", "sluicet")
	nft(t, host, "add", "chain", "inet", "sluicet", "out", "{ type filter hook output priority 0 ; }")
	nft(t, host, "add", "rule", "inet", "sluicet", "out", "tcp", "dport", "2379", "drop")
	cut := time.Now()
	old, _ := waitPrimary("")
	lc.lab.Backends[backendIndex(lc, old)].StopServers(true)
	waitPrimary(old)
	promotions++
	close(stop)
	sampler.Wait()
	cutName := fmt.Sprintf("n%d", c+1)

	runs := hookRuns(t, log)
	seen := map[string]bool{}
	last := uint64(0)
	for _, r := range runs {
		e, _ := strconv.ParseUint(r[0], 10, 64)
		if seen[r[0]] {
			t.Errorf("epoch %s ran its hook twice: %v", r[0], runs)
		}
		seen[r[0]] = true
		if e <= last {
			t.Errorf("epoch %d after %d: %v", e, last, runs)
		}
		last = e
	}
	// The partitioned coordinator runs no hook after the cut (its lease
	// ends within a second of it).
	for _, r := range runs {
		ns, _ := strconv.ParseInt(r[3], 10, 64)
		if r[2] == cutName && time.Unix(0, ns).After(cut) {
			t.Errorf("node %s ran a hook at %v, after it was cut from etcd at %v: %v", cutName,
				time.Unix(0, ns).Format("15:04:05.000"), cut.Format("15:04:05.000"), r)
		}
	}
	t.Logf("%d promotions (20 with the coordinator killed -9, 1 with it cut from etcd): %d hook runs, epochs 1..%d strictly increasing, each once; the cut node %s ran none after the cut; two primaries in %d of the samples",
		promotions, len(runs), last, cutName, len(dual))
	if len(dual) > 0 {
		t.Errorf("two primaries seen: %v", dual)
	}
	if len(runs) < promotions {
		t.Errorf("%d hook runs for %d promotions", len(runs), promotions)
	}
}

func backendIndex(lc *labCluster, addr string) int {
	for i, b := range lc.lab.Backends {
		if b.Addr.Addr().String() == addr {
			return i
		}
	}
	return 0
}

// samplePrimaries reads every node's status until stop and returns the
// samples where two nodes at the same revision send the failover VIP to
// different primaries, or one node to two.
func (lc *labCluster) samplePrimaries(stop <-chan struct{}) []string {
	var bad []string
	for {
		select {
		case <-stop:
			return bad
		case <-time.After(20 * time.Millisecond):
		}
		byRev := map[uint64]string{}
		for i, n := range lc.nodes {
			var st api.Status
			if api.NewClient(n.socket).Do(context.Background(), "GET", "/v1/status", nil, nil, &st) != nil {
				continue // a node killed or restarting
			}
			var usable []string
			for _, v := range st.VIPs {
				for _, b := range v.Backends {
					if v.VIP == vipFail && b.Usable {
						usable = append(usable, b.Addr)
					}
				}
			}
			if len(usable) > 1 {
				bad = append(bad, fmt.Sprintf("node %d: %v", i, usable))
			}
			if len(usable) == 1 {
				if p, ok := byRev[st.Revision]; ok && p != usable[0] {
					bad = append(bad, fmt.Sprintf("revision %d: %s and %s", st.Revision, p, usable[0]))
				}
				byRev[st.Revision] = usable[0]
			}
		}
	}
}
